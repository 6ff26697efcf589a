"""Study storage: model files and their training records, arrays, per-model figures and Parquet
tables under one results location.

The location is a local directory or any URI pyarrow understands (s3://, gs://, hdfs://), so a
study on a cluster writes where every node can read. Tables are written only by the study driver
(one writer per table) and always atomically: a new file is written beside the old one and moved
over it, so a reader — or a run killed mid-write — never sees half a table.

A table is a folder of Parquet files, one per key: `tables/<table>/<study>/<trial, pair or
"study">.parquet`. Writing rows for a trial replaces that trial's file and touches no other, which is
why re-running a study never duplicates a row and why a flush costs the size of its own rows, not
of the table. Every table's schema: docs/tables.md. `StudyTables` is the one reader of a study's tables.

On object storage every read, existence check and write is a request: folders are made once per
store, an object store's single PUT is already atomic (no temporary file and move), and what a
stage needs of the store's state is found by one listing, not a check per file.
"""

from __future__ import annotations

import copy
import io
import re
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..design.spec import results_below
from ..errors import UserInputError

# table -> the columns that identify a row group (one file each); new rows replace the old file.
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("trials", "train_curves", "model_metrics", "psnr", "samples", "jacobian", "eigen", "disc_tangent",
                     "snapshot_samples", "memorizer_distance"), ("study_id", "trial_id")),
    **dict.fromkeys(("pairs", "pair_bases"), ("study_id", "pair_id")),
    **dict.fromkeys(("datasets", "spec_models", "transition", "slopes", "shuffle_psnr", "memorization_time", "memorization_onset",
                     "memorization_tau", "memorization_law"), ("study_id",)),
}


# the layout of `StudyStore.table_file`, found anywhere below a root
_TABLE_FILE = re.compile(r"(?:^|/)tables/(?P<name>[^/]+)/[^/]+/[^/]+\.parquet$")


# The entries a study writes at the top of its results folder (the paths below, Ray Train's `ray`,
# Ray's `logs`, the default dataset cache and MLflow's local store): a local folder holding only
# other things is not a results folder, and `run` will not write into it.
STUDY_ENTRIES = frozenset({"specs", "tables", "models", "packs", "ray", "arrays", "figures", "reports", "logs",
                           "datasets", "mlflow.db", "mlflow-artifacts"})


def spec_path(study: str) -> str:
    """Where a run keeps its study's spec: the first file it writes, once every check has passed."""
    return f"specs/{study}.yaml"


def run_marker_path(study: str) -> str:
    """Held by a run of the study while it runs (its machine, process and start): another run of
    the same study refuses to start, and `status` says it is running."""
    return f"specs/{study}.running"


def model_path(trial_id: str) -> str:
    """A trained model's weights (and final step), written once its training finished: the mark
    of a trained model."""
    return f"models/{trial_id}/model.pt"


def training_record_path(trial_id: str) -> str:
    """How a model was trained, as JSON: loss curve, steps, time, device, pack (written just before
    its model file), so the driver registers a model without loading its weights."""
    return f"models/{trial_id}/training.json"


def pool_path(trial_id: str) -> str:
    """The folder pool a model began training on (its datasets row's pool_images and
    pool_files_sha256), written as its training starts from step 0."""
    return f"models/{trial_id}/pool.json"


def pack_path(pack_id: str) -> str:
    """The trial ids of a pack, as JSON: which models its checkpoints (`pack_run_dir`) hold."""
    return f"packs/{pack_id}.json"


def pack_run_dir(pack_id: str) -> str:
    """A pack's Ray Train run (named after the pack, under the `ray` storage): its checkpoints."""
    return f"ray/{pack_id}"


# The pack's training state in a Ray Train checkpoint folder (`pack_run_dir(pack_id)/checkpoint_*`)
STATE_FILE = "train_state.pt"


def report_dir(study: str) -> str:
    """The study's report (index.html and its PNGs): per study, because studies may share a folder
    (and their models)."""
    return f"reports/{study}"


def report_stamp_path(study: str) -> str:
    """What the study's tables and report were last made from (analysis settings, analysed models,
    compared pairs), written after the report: a run that finds the same needs neither again."""
    return f"reports/{study}.json"


def snapshot_path(trial_id: str, step: int) -> str:
    """The weights of a trial at one of `training.snapshot_steps` (for memorization over time), in
    the format of its model file."""
    return f"models/{trial_id}/step_{step:09d}.pt"


def figure_path(study: str, trial_id: str, name: str) -> str:
    """A figure of one model (drawn where its arrays are, by the analyse and compare stages), for
    its MLflow run. Per study, like its arrays."""
    return f"figures/{study}/{trial_id}/{name}"


def arrays_path(study: str, trial_id: str) -> str:
    """A model's analysis arrays (samples, nearest training images, eigenvectors) for figures. Per
    study: studies sharing a results folder share models but analyse them with their own settings."""
    return f"arrays/{study}/{trial_id}.npz"


class StudyStore:
    """The results of studies at `results`, a folder or a URI; `root` is that place as a path of
    the filesystem `fs`."""

    def __init__(self, results: str):
        self.results = results
        if "://" in results:
            # Credentials and endpoint come from the standard variables (AWS_*, ...) or from query
            # parameters of the URI (s3://bucket/prefix?endpoint_override=host:9000&scheme=http).
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(results)
            except (pa.ArrowException, ValueError) as exc:
                raise UserInputError(f"results location {results}: {exc}") from None
            self.root = self.root.rstrip("/")
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(results).resolve())
        # Nothing is created until something is written: a rejected study leaves no trace.
        self.made: set[str] = set()  # folders made (or found) by this store: each is made once
        # an object store's PUT replaces an object whole; a file elsewhere is written beside and moved
        self.atomic_put = results.split("://", 1)[0].lower() in ("s3", "gs", "gcs") if "://" in results else False

    # ---- files ---------------------------------------------------------------------------------
    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def uri(self, relative: str) -> str:
        """Where Ray and users can find a file: a local path or a URI."""
        return results_below(self.results, relative) if "://" in self.results else self.path(relative)

    def is_empty(self) -> bool:
        """Whether nothing at all is stored here (a mistyped location, or a study never run)."""
        selector = pafs.FileSelector(self.root, recursive=False, allow_not_found=True)
        return not self.fs.get_file_info(selector)

    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self.path(relative)).type != pafs.FileType.NotFound

    def write_bytes(self, relative: str, data: bytes, atomic: bool = True) -> None:
        """Write a file whole. `atomic`: never seen half-written, even by a run killed meanwhile;
        a file that nothing trusts before its marker is written (a figure, a model's arrays) need not be."""
        target = self.path(relative)
        folder = target.rsplit("/", 1)[0]
        if folder not in self.made:
            self.fs.create_dir(folder, recursive=True)
            self.made.add(folder)
        written = target if not atomic or self.atomic_put else f"{target}.{uuid.uuid4().hex}.tmp"
        copy = pa.BufferOutputStream()  # Arrow's own memory: an object store uploads a large write on its
        copy.write(data)  # thread pool, which must not hold the Python bytes while Python exits
        with self.fs.open_output_stream(written) as out:
            out.write(copy.getvalue())
        if written != target:
            self.fs.move(written, target)

    def read_bytes(self, relative: str) -> bytes:
        with self.fs.open_input_stream(self.path(relative)) as f:
            return f.read()

    def read_if_present(self, relative: str) -> bytes | None:
        """A file's bytes, or None where there is none: one request either way."""
        try:
            return self.read_bytes(relative)
        except FileNotFoundError:
            return None

    def files_below(self, relative: str, recursive: bool = True) -> list[str]:
        """The files at or below a folder, relative to it, by one listing (none: no such folder)."""
        base = self.path(relative)
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=recursive, allow_not_found=True))
        if infos:
            self.made.add(base)
        return sorted(info.path[len(base) + 1:] for info in infos if info.type == pafs.FileType.File)

    # ---- tables --------------------------------------------------------------------------------
    def table_file(self, name: str, study_id: str, key: str) -> str:
        """The file of one row group: a trial's or pair's rows, or a study-level table's rows of one study."""
        return f"tables/{name}/{study_id}/{key}.parquet"

    def table_files_below(self) -> dict[str, list[str]]:
        """Table name -> every file of that table in every results folder at or below this one (for
        queries across studies and results folders)."""
        files = defaultdict(list)
        for info in self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True)):
            match = _TABLE_FILE.search(info.path[len(self.root):])
            if info.type == pafs.FileType.File and match and match["name"] in TABLE_KEYS:
                files[match["name"]].append(info.path)
        return {name: sorted(paths) for name, paths in files.items()}

    def read_table_file(self, relative: str) -> pa.Table | None:
        """One file of a table (None where there is none), decoded on this thread: Parquet's thread
        pool frees the Python bytes it decoded a moment after returning the table, and a pool thread
        still at it while Python exits aborts the process (4 runs of `status` in 100, exit 134)."""
        data = self.read_if_present(relative)
        if data is None:
            return None
        return pq.ParquetFile(pa.BufferReader(data), pre_buffer=False).read(use_threads=False)

    def table_keys(self, name: str, study_id: str) -> list[str]:
        """The keys (trial, pair or "study") with a file in table `name` of a study, by one listing."""
        return [file.removesuffix(".parquet") for file in self.files_below(f"tables/{name}/{study_id}", False)
                if file.endswith(".parquet")]

    def read_table(self, name: str) -> pa.Table | None:
        """Every file of a table, in every study, as one table (columns unified: a file written by an
        older version may lack a newer column)."""
        return concat([self.read_table_file(f"tables/{name}/{file}") for file in self.files_below(f"tables/{name}")
                       if file.endswith(".parquet")])

    def rows(self, name: str) -> list[dict]:
        table = self.read_table(name)
        return [] if table is None else table.to_pylist()

    def upsert(self, name: str, rows: list[dict]) -> dict[tuple[str, str], pa.Table]:
        """Write `rows`, one file per key (study and trial, pair or nothing for a study-level table),
        each replacing that key's earlier file atomically; returns each key's table as written."""
        groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for row in rows:
            groups[row["study_id"], row[TABLE_KEYS[name][-1]] if len(TABLE_KEYS[name]) > 1 else "study"].append(row)
        written = {}
        for (study_id, key), group in groups.items():
            buffer = io.BytesIO()
            written[study_id, key] = pa.Table.from_pylist(group)
            pq.write_table(written[study_id, key], buffer)
            self.write_bytes(self.table_file(name, study_id, key), buffer.getvalue())
        return written


def concat(parts: list[pa.Table | None]) -> pa.Table | None:
    """Files of a table as one table, columns unified (None: no file)."""
    parts = [part for part in parts if part is not None]
    return pa.concat_tables(parts, promote_options="permissive") if parts else None


class StudyTables:
    """The tables of one study as this run knows them: each file read from the store at most once,
    when first needed, and the rows this run writes kept as written. Every stage reads its tables
    here (the driver's stages from one instance), in the store's order: by key, as the files sort."""

    def __init__(self, store: StudyStore, study_id: str):
        self.store, self.study_id = store, study_id
        self.files: dict[str, dict[str, pa.Table]] = defaultdict(dict)  # table -> key -> its rows
        self.listed: set[str] = set()  # tables whose every file is in `files`
        self.kept: dict[str, set[str]] = {}  # key column -> the keys `table` gives (see `of`)

    def of(self, trials: set[str], pairs: set[str]) -> StudyTables:
        """These tables, in which the per-model and per-pair tables give only the files of `trials`
        and `pairs` (the same files, read once for both). A study's folder also keeps the files of
        models an earlier version of its spec had (another N, other training settings), and its study
        tables must not pool them with the spec's own."""
        view = copy.copy(self)
        view.kept = {"trial_id": trials, "pair_id": pairs}
        return view

    def put(self, name: str, rows: list[dict]) -> None:
        """Write rows (replacing their keys' files) and keep them. A study-level table given no rows
        loses its file, so that old rows do not outlive the models they were made from."""
        if not rows and len(TABLE_KEYS[name]) == 1:
            if self.files[name].pop("study", None) is not None or name not in self.listed:
                try:
                    self.store.fs.delete_file(self.store.path(self.store.table_file(name, self.study_id, "study")))
                except FileNotFoundError:
                    pass
            self.listed.add(name)
        for (study_id, key), table in self.store.upsert(name, rows).items():
            if study_id == self.study_id:
                self.files[name][key] = table
                if len(TABLE_KEYS[name]) == 1:  # a study-level table is one file: now known whole
                    self.listed.add(name)

    def key_table(self, name: str, key: str) -> pa.Table | None:
        """The rows of one trial, pair or "study" (one file, read only if not known)."""
        if key not in self.files[name] and name not in self.listed:
            table = self.store.read_table_file(self.store.table_file(name, self.study_id, key))
            if table is not None:
                self.files[name][key] = table
        return self.files[name].get(key)

    def key_rows(self, name: str, key: str) -> list[dict]:
        table = self.key_table(name, key)
        return [] if table is None else table.to_pylist()

    def table(self, name: str) -> pa.Table | None:
        """Every row of the study's table (None: no file), of the kept keys only in a view (`of`)."""
        if name not in self.listed:
            for key in self.store.table_keys(name, self.study_id):
                self.key_table(name, key)
            self.listed.add(name)
        known, kept = self.files[name], self.kept.get(TABLE_KEYS[name][-1])
        return concat([known[key] for key in sorted(known, key=lambda key: f"{key}.parquet")
                       if kept is None or key in kept])

    def rows(self, name: str) -> list[dict]:
        table = self.table(name)
        return [] if table is None else table.to_pylist()


def read_report(store: StudyStore, study: str) -> dict[str, bytes]:
    """The files of the study's report as last written (index.html and its PNGs)."""
    return {name: store.read_bytes(f"{report_dir(study)}/{name}") for name in store.files_below(report_dir(study), False)}


def save_arrays(store: StudyStore, relative: str, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    store.write_bytes(relative, buffer.getvalue(), atomic=False)  # trusted only once its model is marked analysed


def load_arrays(store: StudyStore, relative: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(store.read_bytes(relative))) as data:
        return dict(data)
