"""What a study costs its results store, in operations per model: on object storage every read,
existence check and write is a request, billed and slow.

The micro study runs in a subprocess whose every process (the driver and Ray's workers) counts its
store operations (tests/store_ops). Measured at 0.6.0, before the study layer kept its state in
memory: 627 operations for 4 models (128 reads, 102 checks, 397 writes), 157 per model; a re-run
of the finished study 67.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
OPS = ROOT / "tests" / "store_ops"
sys.path.insert(0, str(OPS))
import counting_store  # noqa: E402

BEFORE_PER_MODEL = 627 / 4


def _run(spec: Path, ops: Path) -> None:
    ops.mkdir()
    env = {**os.environ, "GAHB_SCALE_STORE_OPS": str(ops),
           "PYTHONPATH": os.pathsep.join([str(OPS), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "gahb_scale.cli", "run", str(spec)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_a_study_makes_at_most_half_the_store_operations_per_model_of_0_6(tmp_path):
    data = yaml.safe_load((ROOT / "studies" / "micro.yaml").read_text())
    data["storage"] = {"results_dir": str(tmp_path / "results" / "micro")}
    spec = tmp_path / "micro.yaml"
    spec.write_text(yaml.safe_dump(data))
    models = len(data["train_sizes"]) * data["split_pairs"] * len(data["seeds"]) * 2

    _run(spec, tmp_path / "first")
    first = counting_store.counts(tmp_path / "first")
    print(f"store operations, first run: {dict(first)}; {sum(first.values()) / models:.1f} per model "
          f"(0.6.0: {BEFORE_PER_MODEL:.1f})")
    assert sum(first.values()) / models <= BEFORE_PER_MODEL / 2

    # a finished study: nothing to train, analyse or write but its spec (its folder, a write and its
    # move) and its run marker (the write, its read and removal at the end, and a rewrite a minute:
    # counted apart, as a slow re-run rewrites it once more)
    _run(spec, tmp_path / "again")
    again, marker = counting_store.counts(tmp_path / "again", ".running"), counting_store.counts(tmp_path / "again")
    print(f"store operations, re-run: {dict(again)}; the run marker's: {dict(marker - again)}")
    assert again["write"] <= 3 and sum(again.values()) <= 67 / 2
    assert (marker - again)["write"] >= 2  # written and removed: it was there
