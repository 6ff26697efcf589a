"""Bookkeeping cost per model as a study grows: the tables a model's analysis writes, model by model.

Simulates a study of `--models` analysed models (default 2,000). Each model adds the rows of every
per-model table, with the row counts of a smoke-study model (PSNR curve, 32 samples, Jacobian, 64
eigenvalues, memorizer distance, ...), written the way the runner flushes them; every second model
adds its pair's rows. Two layouts are timed in the same run:
- `files`: gahb-scale's store, one Parquet file per (table, study, trial or pair);
- `whole`: each table one Parquet file, read and rewritten on every write (the layout before 0.3.0).

For each, the median write time per model is taken over the first 100 models (empty tables) and over
the last 100 (tables already holding the other models' rows, written in one go beforehand).

    python benchmarks/table_bookkeeping.py [--models 2000]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gahb_scale.study.store import TABLE_KEYS, StudyStore

ROWS_PER_MODEL = {"psnr": 12, "samples": 32, "jacobian": 1, "eigen": 64, "memorizer_distance": 6,
                  "disc_tangent": 1, "model_metrics": 1, "trials": 1, "train_curves": 8}
ROWS_PER_PAIR = {"pairs": 32, "pair_bases": 1}


class WholeTableStore:
    """The baseline: one file per table, every write reads it, drops the rows it replaces, rewrites it."""

    def __init__(self, root: str):
        self.root = Path(root)

    def upsert(self, name: str, rows: list[dict]) -> None:
        path = self.root / f"{name}.parquet"
        new = pa.Table.from_pylist(rows)
        if path.exists():
            old = pq.read_table(path)
            key = TABLE_KEYS[name][-1]
            replaced = {r[key] for r in rows}
            old = old.filter(pa.array([v not in replaced for v in old.column(key).to_pylist()]))
            new = pa.concat_tables([old, new], promote_options="permissive")
        buffer = io.BytesIO()
        pq.write_table(new, buffer)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(path)


def tables_of(index: int) -> dict[str, list[dict]]:
    """Every row model `index` adds (and its pair's, for every second model)."""
    trial, pair = f"t{index:06d}", f"p{index // 2:06d}"
    tables = {name: [{"study_id": "bench", "trial_id": trial, "analysis_id": "a", "k": k, "value": 0.5 * k}
                     for k in range(count)] for name, count in ROWS_PER_MODEL.items()}
    if index % 2:
        tables.update({name: [{"study_id": "bench", "pair_id": pair, "analysis_id": "a", "k": k, "value": 0.9}
                              for k in range(count)] for name, count in ROWS_PER_PAIR.items()})
    return tables


def write(store, tables: dict[str, list[dict]]) -> None:
    for name, rows in sorted(tables.items(), key=lambda item: item[0] in ("model_metrics", "pairs")):
        store.upsert(name, rows)  # the stage markers last, as the runner flushes


def per_model_seconds(store, indices: range) -> float:
    seconds = []
    for i in indices:
        tables = tables_of(i)
        started = time.perf_counter()
        write(store, tables)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)  # robust to the noise of a shared machine


def prefill(store, count: int) -> None:
    """The rows of models 0 ... count-1, written in one go per table."""
    merged: dict[str, list[dict]] = {}
    for i in range(count):
        for name, rows in tables_of(i).items():
            merged.setdefault(name, []).extend(rows)
    write(store, merged)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=2000)
    args = parser.parse_args()
    print(f"{args.models} models, {sum(ROWS_PER_MODEL.values())} rows each (+{sum(ROWS_PER_PAIR.values())} "
          "per pair, every second model)")
    for layout, make in (("files", lambda d: StudyStore(d)), ("whole", WholeTableStore)):
        with tempfile.TemporaryDirectory() as empty, tempfile.TemporaryDirectory() as full:
            first = per_model_seconds(make(empty), range(100))
            grown = make(full)
            prefill(grown, args.models - 100)
            last = per_model_seconds(grown, range(args.models - 100, args.models))
        print(f"{layout}: bookkeeping per model, first 100 {first * 1e3:.1f} ms, last 100 {last * 1e3:.1f} ms, "
              f"last/first {last / first:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
