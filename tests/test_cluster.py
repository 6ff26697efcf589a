"""Studies on a real multi-node Ray cluster (a head and two worker nodes, each a separate `ray start`
on this machine), submitted the way the README tells cluster users to — `ray job submit --working-dir .
-- gahb-scale run ... --address auto` — with results on an S3-protocol server.

Every node reads the object store with its own AWS_* variables, as pods given the same Secret do.
Then the failures a cluster has: a training worker SIGKILLed
mid-run, and a whole worker node lost mid-study. The same submitted command must finish with every
table row present exactly once, and the trials table must show the restart from a checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml
from servers import RayCluster, s3_server
from study_checks import assert_every_row_once

from gahb_scale.design.spec_file import load_spec
from gahb_scale.design.trials import expand_trials
from gahb_scale.study.store import StudyStore, model_path
from gahb_scale.study.train import max_concurrent, plan_packs

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        server.create_bucket("gahb")
        yield server


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    (folder / "home").mkdir()
    # A home of its own: what the driver keeps there (the MLflow store of remote results) stays in the test.
    plain = {**os.environ, "HOME": str(folder / "home"), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    started = time.monotonic()
    ray_cluster = RayCluster(folder, {**plain, **s3.env})
    try:
        for _ in range(2):
            ray_cluster.add_worker(cpus=1, env={**plain, **s3.env})
        print(f"cluster of 3 nodes up in {time.monotonic() - started:.0f} s")
        ray_cluster.plain_env = plain
        yield ray_cluster
    finally:
        ray_cluster.stop()


@pytest.fixture
def read_s3(s3, monkeypatch):
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)


def write_spec(folder: Path, name: str, **changes) -> Path:
    data = yaml.safe_load((ROOT / "studies" / "micro.yaml").read_text())
    data["name"] = name
    for section, values in changes.items():
        data[section] = {**data[section], **values} if isinstance(values, dict) else values
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def submit(cluster: RayCluster, spec: Path, results: str) -> str:
    """`ray job submit` as the README shows it, with the results root `results` (the study's folder
    is `<results>/micro`, after its spec's results_dir); returns the submission id without waiting."""
    job = f"gahb-{uuid.uuid4().hex[:8]}"
    command = [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard, "--working-dir", str(ROOT),
               "--submission-id", job, "--no-wait", "--", "gahb-scale", "run", str(spec), "--address", "auto",
               "--results", results]
    deadline = time.monotonic() + 120
    while True:
        done = subprocess.run(command, capture_output=True, text=True, env=cluster.plain_env, timeout=300)
        # a fresh head's job agent can start a little after its dashboard answers
        if done.returncode == 0 or "No available agent" not in done.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return job


def job_status(cluster: RayCluster, job: str) -> str:
    with urllib.request.urlopen(f"{cluster.dashboard}/api/jobs/{job}", timeout=30) as response:
        return json.load(response)["status"]


def job_logs(cluster: RayCluster, job: str) -> str:
    with urllib.request.urlopen(f"{cluster.dashboard}/api/jobs/{job}/logs", timeout=30) as response:
        return json.load(response)["logs"]


def wait_for_job(cluster: RayCluster, job: str, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while (status := job_status(cluster, job)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, \
            f"job {job} still {status} after {timeout:.0f} s:\n{job_logs(cluster, job)[-4000:]}"
        time.sleep(2)
    if os.environ.get("GAHB_TEST_LOG_DIR"):  # to read a job's whole output after the cluster is gone
        (Path(os.environ["GAHB_TEST_LOG_DIR"]) / f"{job}.log").write_text(job_logs(cluster, job))
    return status


def test_job_submit_runs_a_study_on_the_cluster(cluster, read_s3, tmp_path):
    root = "s3://gahb/cluster"
    results = f"{root}/micro"
    spec = write_spec(tmp_path, "micro")
    started = time.monotonic()
    job = submit(cluster, spec, root)
    status = wait_for_job(cluster, job)
    logs = job_logs(cluster, job)
    assert status == "SUCCEEDED", logs[-4000:]
    print(f"micro study on the 3-node cluster: {time.monotonic() - started:.0f} s from submit to finish")
    rows = assert_every_row_once(results, load_spec(spec, results))
    assert {r["workers"] for r in rows["trials"]} == {1}
    assert f"--results {root}" in logs  # the follow-up commands read the same results


def _train_long(tmp_path: Path, name: str, models_per_pack: int) -> Path:
    """Two models trained long enough (a few seconds each) to be interrupted after a checkpoint."""
    return write_spec(tmp_path, name, train_sizes=[4], training={"steps": 1500, "checkpoint_every": 100,
                                                                 "log_every": 100, "lr_halve_every": 500,
                                                                 "snapshot_steps": [100]},
                      resources={"models_per_pack": models_per_pack})


def _training_worker_after_checkpoint(cluster: RayCluster, spec: Path, results: str, job: str):
    """Wait until every model still training has checkpoints in the object store; returns (worker
    node, pid) of a Ray Train worker training then, so whichever dies had a checkpoint to resume."""
    store = StudyStore(results)
    study = load_spec(spec, results)
    trials = expand_trials(study)
    packs = plan_packs(study, trials, max_concurrent(study, None))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert job_status(cluster, job) in ("PENDING", "RUNNING"), job_logs(cluster, job)[-4000:]
        assert not all(store.exists(model_path(t.trial_id)) for t in trials), \
            "training finished before the failure could be injected: train longer"
        training = [p for p in packs if not all(store.exists(model_path(t.trial_id)) for t in p.trials)]
        listings = [store.fs.get_file_info(pafs.FileSelector(store.path(f"ray/{p.pack_id}"), allow_not_found=True))
                    for p in training]
        # three: a checkpoint folder appears while it uploads, and then waits in the worker's report
        # queue (one place) until the controller polls it, so only a third implies the first registered
        if all(sum(i.base_name.startswith("checkpoint_") for i in listing) >= 3 for listing in listings):
            for node in cluster.workers:
                for pid, args in cluster.node_processes(node):
                    if args.startswith("ray::RayTrainWorker"):
                        return node, pid
        time.sleep(0.3)
    raise AssertionError(f"no checkpoint within 600 s:\n{job_logs(cluster, job)[-4000:]}")


def test_training_worker_killed_mid_run_restarts_from_checkpoint(cluster, read_s3, tmp_path):
    root = "s3://gahb/cluster/worker-killed"
    results = f"{root}/micro"
    spec = _train_long(tmp_path, "worker_killed", models_per_pack=2)  # the worker of a pack of both models
    job = submit(cluster, spec, root)
    _, pid = _training_worker_after_checkpoint(cluster, spec, results, job)
    os.kill(pid, 9)
    status = wait_for_job(cluster, job)
    assert status == "SUCCEEDED", job_logs(cluster, job)[-4000:]
    rows = assert_every_row_once(results, load_spec(spec, results))
    assert {r["pack_size"] for r in rows["trials"]} == {2}
    assert min(r["resumed_from_step"] for r in rows["trials"]) >= 100  # both models of the pack resumed


def test_worker_node_lost_mid_study_is_survived(cluster, read_s3, tmp_path):
    """Last in this file: it leaves the cluster one worker node short."""
    root = "s3://gahb/cluster/node-lost"
    results = f"{root}/micro"
    spec = _train_long(tmp_path, "node_lost", models_per_pack=1)  # two worker groups, one per node
    job = submit(cluster, spec, root)
    node, _ = _training_worker_after_checkpoint(cluster, spec, results, job)
    cluster.kill(node)
    status = wait_for_job(cluster, job)
    assert status == "SUCCEEDED", job_logs(cluster, job)[-4000:]
    rows = assert_every_row_once(results, load_spec(spec, results))
    assert max(r["resumed_from_step"] for r in rows["trials"]) >= 100
