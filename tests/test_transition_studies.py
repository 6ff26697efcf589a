"""The shipped transition studies: what their specs promise, and the GPU one end to end on the CPU
at toy sizes (its grid, schedules per N, packing and snapshots shrunk, nothing else changed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gahb_scale.cli import main
from gahb_scale.design.spec_file import load_spec
from gahb_scale.design.trials import expand_trials
from gahb_scale.study.store import StudyStore

STUDIES = Path(__file__).resolve().parents[1] / "studies"


@pytest.mark.parametrize("name", ["transition_cpu", "transition_gpu", "memorization_law_cpu"])
def test_small_n_train_at_least_as_long_as_large_n(name):
    """Steps per N: the two smallest training sets, the memorizing end, train at least as long as any
    larger N (they must have the time to memorize, and memorizing takes longer the larger N is: in the
    law study the steps grow with N), and every schedule ends after its last snapshot. Above them a
    larger N may train longer than a smaller one: there the schedule serves the A/B agreement."""
    spec = load_spec(STUDIES / f"{name}.yaml")
    steps = [spec.training.steps_for(n) for n in spec.train_sizes]
    assert isinstance(spec.training.steps, dict)
    if name == "memorization_law_cpu":
        assert steps == sorted(steps)
    else:
        memorizing_sizes = [n for n in spec.train_sizes if n >= 2][:2]
        memorizing = [spec.training.steps_for(n) for n in memorizing_sizes]
        larger = [s for n, s in zip(spec.train_sizes, steps) if n > max(memorizing_sizes)]
        assert min(memorizing) >= max(larger)
    assert all(config.steps >= max(config.snapshot_steps, default=0)
               for config in (spec.training.config(0, n) for n in spec.train_sizes))


def test_memorization_law_study_can_fit_the_law():
    """At least 4 values of N that can memorize (N >= 2) and several seeds to bootstrap over."""
    spec = load_spec(STUDIES / "memorization_law_cpu.yaml")
    assert len([n for n in spec.train_sizes if n >= 2]) >= 4 and len(spec.seeds) >= 3
    assert len(spec.training.snapshot_steps) >= 8


def toy(data: dict, results: Path) -> dict:
    """The spec shrunk to seconds on a CPU: two train sizes, tiny networks and schedules."""
    small, large = data["train_sizes"][0], data["train_sizes"][-1]
    data.update(image_size=16, train_sizes=[small, 16], test_images=16)
    data["architectures"] = [{**arch, "params": {**arch["params"], "width": 4, "blocks": 2}}
                             for arch in data["architectures"]]
    data["training"].update(steps={small: 30, 16: 20}, lr_halve_every={small: 15, 16: 10}, batch_size=8,
                            precision="fp32", checkpoint_every=10, log_every=10, snapshot_steps=[10, 20])
    data["sampling"].update(num_samples=4, max_steps=300)
    data["analysis"].update(sigmas=[5, 25, 100], psnr_images=8, jacobian_images=1, jacobian_sigmas=[25],
                            eigenvalues_kept=16, eigenvector_images=2, bootstrap=50)
    data["resources"] = {"cpus_per_trial": 1, "gpus_per_trial": 0, "max_concurrent_trials": 2,
                         "models_per_pack": data["resources"]["models_per_pack"]}
    data["storage"] = {"results_dir": str(results)}
    assert large > 16
    return data


@pytest.mark.integration
def test_transition_gpu_study_runs_end_to_end_on_cpu_at_toy_size(tmp_path, capsys):
    data = toy(yaml.safe_load((STUDIES / "transition_gpu.yaml").read_text()), tmp_path / "results")
    spec_path = tmp_path / "transition_gpu.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    assert main(["run", str(spec_path)]) == 0
    spec = load_spec(spec_path)
    store = StudyStore(str(tmp_path / "results"))
    trials = {row["trial_id"]: row for row in store.rows("trials")}
    assert {(row["n"], row["steps"]) for row in trials.values()} == {(2, 30), (16, 20)}
    assert len({row["pack_id"] for row in trials.values()}) == 2  # one pack per schedule
    transition = sorted(store.rows("transition"), key=lambda row: row["n"])
    assert [row["n"] for row in transition] == [2, 16]
    for row in transition:  # every A/B measure has its chance level beside it
        for column in ("ab_cosine_chance", "ab_cosine_centered_chance", "ab_l2_chance", "nn_cosine_centered_chance"):
            assert row[column] == row[column], column  # not NaN
    steps = {(row["trial_id"], row["step"]) for row in store.rows("snapshot_samples")}
    for trial in expand_trials(spec):  # the snapshots within each model's schedule, and its end
        assert {s for t, s in steps if t == trial.trial_id} == {10, 20, spec.training.steps_for(trial.n)}
    assert [row["measure"] for row in store.rows("memorization_law")]
    assert "transition table" in capsys.readouterr().out
    from mlflow.tracking import MlflowClient  # each model's MLflow run names its own N's schedule
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("gahb-scale/transition_gpu").experiment_id])
    assert {(r.data.params["n"], r.data.params["train.steps"], r.data.params["train.lr_halve_every"])
            for r in runs if "n" in r.data.params} == {("2", "30", "15"), ("16", "20", "10")}
