"""Watching a study while it runs: MLflow runs that exist from the first step, against a real
`mlflow server`; a driver SIGKILLed mid-training whose re-run continues the same runs; and a
terminal that shows the study's progress, not Ray's banners.

One scenario, run once for the module (two study runs, a few minutes on 2 CPUs): its observations
are checked by the tests below.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from servers import mlflow_server

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
# Long enough (a few seconds per model) for two live loss points before a model ends: reports
# reach MLflow at most every 2 s
STEPS, LOG_EVERY, CHECKPOINT_EVERY = 3000, 100, 500
# What Ray prints on its own: Tune's configuration box and TensorBoard hint, the token notice, raylet's warning
RAY_BANNERS = ("Configuration for experiment", "tensorboard", "Token authentication", "PYTHON worker processes")


def _run(spec: Path, out: Path, env: dict) -> subprocess.Popen:
    with open(out, "w") as file:
        return subprocess.Popen([sys.executable, "-m", "gahb_scale.cli", "run", str(spec)], cwd=ROOT, env=env,
                                stdout=file, stderr=subprocess.STDOUT, start_new_session=True)


def _runs(client: MlflowClient) -> tuple[list, list]:
    experiment = client.get_experiment_by_name("gahb-scale/micro")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return ([r for r in runs if r.data.tags.get("gahb.role") == "study"],
            [r for r in runs if r.data.tags.get("gahb.role") == "trial"])


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    folder = tmp_path_factory.mktemp("live")
    data = yaml.safe_load((ROOT / "studies" / "micro.yaml").read_text())
    data["train_sizes"] = [4]  # one split pair: 2 models
    data["training"].update(steps=STEPS, log_every=LOG_EVERY, checkpoint_every=CHECKPOINT_EVERY,
                            snapshot_steps=[CHECKPOINT_EVERY])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    with mlflow_server(folder, f"sqlite:///{folder / 'server.db'}", str(folder / "artifacts"), {}) as uri:
        data["storage"] = {"results_dir": str(folder / "results"), "mlflow_tracking_uri": uri}
        spec = folder / "micro.yaml"
        spec.write_text(yaml.safe_dump(data))
        client = MlflowClient(uri)

        # 1. while the first run trains: a RUNNING study run, a model run with >= 2 loss points, not all,
        # one past its first checkpoint (reported after it is written)
        process = _run(spec, folder / "first.txt", env)
        seen, deadline = None, time.monotonic() + 600
        while seen is None and time.monotonic() < deadline and process.poll() is None:
            studies, models = _runs(client)
            for model in models:
                steps = [m.step for m in client.get_metric_history(model.info.run_id, "loss")]
                if len(steps) >= 2 and CHECKPOINT_EVERY < max(steps) < STEPS and studies:
                    seen = {"study": studies[0].info.status, "model": model.info.status, "steps": steps}
                    break
            time.sleep(0.5)
        # 2. the driver dies mid-training, without a chance to end anything
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        before = _runs(client)

        # 3. the same command again, to the end
        started = time.monotonic()
        rerun = _run(spec, folder / "second.txt", env)
        rc = rerun.wait(timeout=900)
        after = _runs(client)
        histories = {r.data.tags["gahb.trial_id"]: [m.step for m in client.get_metric_history(r.info.run_id, "loss")]
                     for r in after[1]}
        transition = client.get_metric_history(after[0][0].info.run_id, "discs/unet_micro/f_mem") if after[0] else []
        yield {"seen": seen, "before": before, "after": after, "rc": rc, "histories": histories,
               "transition": transition, "rerun_s": time.monotonic() - started, "folder": folder,
               "output": (folder / "first.txt").read_text() + (folder / "second.txt").read_text()}


def test_runs_are_live_while_training_and_a_rerun_after_a_kill_continues_them(scenario):
    assert scenario["seen"] is not None, "no model run had 2 loss points while training ran"
    assert scenario["seen"]["study"] == "RUNNING" and scenario["seen"]["model"] == "RUNNING"
    assert scenario["rc"] == 0, scenario["output"][-3000:]

    studies, models = scenario["after"]
    assert len(studies) == 1 and len(models) == 2  # the killed run's runs continued, none added
    assert {r.info.run_id for r in scenario["before"][1]} <= {r.info.run_id for r in models}
    assert studies[0].info.status == "FINISHED" and all(r.info.status == "FINISHED" for r in models)
    assert studies[0].info.end_time > studies[0].info.start_time
    assert {r.data.tags["mlflow.parentRunId"] for r in models} == {studies[0].info.run_id}
    records = [json.loads(p.read_text()) for p in (scenario["folder"] / "results" / "models").glob("*/training.json")]
    assert any(record["resumed_from"] >= CHECKPOINT_EVERY for record in records)
    # every training step logged once, though the re-run resumed from a checkpoint and reported again
    # (live at most every 2 s, the steps in between from the training record once the model is saved)
    for steps in scenario["histories"].values():
        assert sorted(steps) == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    assert [m.step for m in scenario["transition"]] == [4]  # the transition, step = N
    assert any(key.startswith("system/cpu_utilization") for key in studies[0].data.metrics)
    for model in models:
        assert {"lr", "pack_images_per_s", "psnr_gap"} <= set(model.data.metrics)


def test_default_output_shows_progress_not_rays_banners(scenario):
    output = scenario["output"]
    for banner in RAY_BANNERS:
        assert banner.lower() not in output.lower(), banner
    assert f"step {STEPS}/{STEPS} loss " in output
    # the re-run says where each pack resumes, and its bar counts the steps left
    resumed = [int(step) for step in re.findall(rf"resumes at step (\d+)/{STEPS}, its last checkpoint", output)]
    left = sum(STEPS - step for step in resumed) + STEPS * (2 - len(resumed))  # a pack may have none yet
    assert resumed and f"[train] {left}/{left} steps" in output
    assert "[pairs] 1/1" in output
    logs = list((scenario["folder"] / "results" / "logs").glob("micro-*.log"))
    assert len(logs) == 2 and all(f"Ray's own output: {log}" in output for log in logs)
    assert any("Configuration for experiment" in log.read_text() for log in logs)  # where they went instead
