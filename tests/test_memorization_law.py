"""The memorization-time law (summarise.py): each model's τ_mem from its f_mem over weight snapshots,
and the fit log τ_mem = a + b·log N with its bootstrap interval, on snapshot rows built so that
τ_mem ∝ N^b exactly."""

from __future__ import annotations

import math

import pytest

from gahb_scale import figures
from gahb_scale.analysis import fit_memorization_law, level_crossing
from gahb_scale.design.spec_file import parse_spec
from gahb_scale.study.report import law_statement
from gahb_scale.study.summarise import (memorization_law_rows, memorization_tau_rows,
                                        memorization_time_rows, onset_rows)

SAMPLES = 4  # per model and snapshot: f_mem moves in steps of 1/4


def _spec(seeds: list[int]):
    return parse_spec({"name": "t", "image_size": 12, "datasets": [{"name": "discs", "kind": "discs"}],
                       "architectures": [{"name": "u", "kind": "unet", "params": {"width": 4, "blocks": 1}}],
                       "train_sizes": [2, 4], "seeds": seeds, "analysis": {"bootstrap": 200, "onset_f_mem": 0.5}})


def _model(trial_id: str, n: int, seed: int, split: str, curve: dict[int, float]) -> tuple[dict, list[dict]]:
    """A model's metrics row and its snapshot rows: at each step, SAMPLES samples of which the share
    curve[step] is memorized (d1/d2 = 0.1 < 1/3; the others 0.9), by both measures."""
    metrics = {"study_id": "t", "trial_id": trial_id, "dataset": "discs", "architecture": "u", "n": n,
               "seed": seed, "pair": 0, "split": split}
    rows = [{"study_id": "t", "trial_id": trial_id, "step": step, "sample_seed": i, "diverged": False,
             "d1_d2": 0.1 if i < share * SAMPLES else 0.9, "d1_d2_scale_free": 0.1 if i < share * SAMPLES else 0.9,
             "nn_cosine_centered": 0.5}
            for step, share in curve.items() for i in range(SAMPLES)]
    return metrics, rows


def _crossing_at(tau: float) -> dict[float, float]:
    """f_mem 0 → 1/4 → 3/4 → 1 at τ/4, τ/2, 2τ, 4τ: no snapshot at τ itself, and the crossing of
    1/2 interpolated in log step between τ/2 and 2τ is exactly τ."""
    return {tau / 4: 0.0, tau / 2: 0.25, 2 * tau: 0.75, 4 * tau: 1.0}


def _study(b: float, ns: list[int], seeds: list[int]) -> tuple[list[dict], list[dict]]:
    """τ = 64 · N^(b + 0.1·(seed − mean seed)) · 2^seed · 2^(±1/4 for model A / B): the seeds' exponents
    and the models of each seed scatter (an interval of non-zero width whichever is resampled), while
    the geometric mean over seeds and models follows N^b exactly."""
    centre = sum(seeds) / len(seeds)
    metrics, samples = [], []
    for n in ns:
        for seed in seeds:
            for split, spread in (("A", 0.25), ("B", -0.25)):
                tau = 64 * n ** (b + 0.1 * (seed - centre)) * 2 ** (seed + spread)
                model, rows = _model(f"{n}-{seed}-{split}", n, seed, split, _crossing_at(tau))
                metrics.append(model)
                samples += rows
    return metrics, samples


def _law(spec, metrics, samples, measure="f_mem"):
    tau = memorization_tau_rows(spec, metrics, samples)
    return tau, next(row for row in memorization_law_rows(spec, tau) if row["measure"] == measure)


def test_the_crossing_is_interpolated_in_log_step():
    assert level_crossing([100, 400], [0.25, 0.75], 0.5) == (400, 100, pytest.approx(200))
    assert level_crossing([100, 200, 400], [0.0, 0.5, 1.0], 0.5) == (200, 100, pytest.approx(200))  # on a snapshot
    assert level_crossing([100, 200, 400], [0.0, math.nan, 0.75], 0.5)[1] == 100  # undefined steps skipped
    first, below, tau = level_crossing([100, 200], [0.6, 1.0], 0.5)  # reached before the first snapshot
    assert (first, below) == (200 // 2, None) and math.isnan(tau)
    first, below, tau = level_crossing([100, 200], [0.1, 0.4], 0.5)  # never reached
    assert (first, below) == (None, None) and math.isnan(tau)


@pytest.mark.parametrize("b, ns", [(1.0, [2, 4, 8, 16]), (0.5, [4, 16, 64, 256])])
@pytest.mark.parametrize("seeds", [[0, 1, 2], [0]])
def test_the_law_gives_the_exponent_back(b, ns, seeds):
    spec = _spec(seeds)
    tau, law = _law(spec, *_study(b, ns, seeds))
    reached = {row["trial_id"]: row["first_step"] for row in tau if row["measure"] == "f_mem"}[f"{ns[0]}-0-A"]
    assert reached == pytest.approx(2 * 64 * ns[0] ** (b - 0.1 * seeds[-1] / 2) * 2 ** 0.25)  # the snapshot at 2τ
    assert law["exponent"] == pytest.approx(b, abs=1e-9)
    assert law["ci_low"] < b - 0.01 and b + 0.01 < law["ci_high"] < law["ci_low"] + 0.5
    assert (law["n_values"], law["units"], law["censored"], law["seeds"]) == (4, 4 * len(seeds) * 2, 0, len(seeds))
    assert law["resampled_over"] == ("seeds" if len(seeds) > 1 else "models within each N")
    assert law["intercept"] == pytest.approx(math.log(64) + math.log(2) * (len(seeds) - 1) / 2, abs=1e-9)
    scale_free = memorization_law_rows(spec, tau)
    assert [row["measure"] for row in scale_free] == ["f_mem", "f_mem_scale_free"]
    assert scale_free[1]["exponent"] == pytest.approx(b, abs=1e-9)


def test_the_core_fit_takes_plain_lists():
    """As a notebook calls it: τ = c·N^0.8 exactly, with a different c per seed, and one censored
    model (τ NaN) left out. Every resample of seeds fits parallel lines: the interval is the exponent."""
    ns, seeds = [2, 4, 8, 16] * 2 + [32], [0] * 4 + [1] * 4 + [1]
    tau = [(50 if seed == 0 else 80) * n ** 0.8 for n, seed in zip(ns[:8], seeds)] + [math.nan]
    law = fit_memorization_law(ns, tau, seeds, n_boot=200)
    assert law.exponent == pytest.approx(0.8, abs=1e-9)
    assert law.ci_low == pytest.approx(0.8, abs=1e-9) and law.ci_high == pytest.approx(0.8, abs=1e-9)
    assert (law.n_values, law.units, law.seeds, law.resampled_over, law.resamples) == (4, 8, 2, "seeds", 200)
    assert law.intercept == pytest.approx(math.log(math.sqrt(50 * 80)), abs=1e-9)


def test_censored_and_unbracketed_models_are_flagged_and_left_out_of_the_fit():
    spec = _spec([0])
    metrics, samples = _study(1.0, [2, 4, 8], [0])
    for trial_id, curve in (("never", {100: 0.0, 1000: 0.25}), ("early", {100: 0.75, 1000: 1.0})):
        model, rows = _model(trial_id, 16, 0, "A", curve)
        metrics.append(model)
        samples += rows
    tau, law = _law(spec, metrics, samples)
    flags = {row["trial_id"]: (row["censored"], row["first_step"], row["step_below"], math.isnan(row["tau"]))
             for row in tau if row["measure"] == "f_mem"}
    assert flags["never"] == (True, None, None, True) and flags["early"] == (False, 100, None, True)
    assert law["exponent"] == pytest.approx(1.0, abs=1e-9)  # the N = 16 models would pull it off
    assert (law["n_values"], law["units"], law["censored"], law["before_first_snapshot"]) == (3, 6, 1, 1)


def test_one_model_at_each_n_gives_no_interval():
    """One seed and one model at each N: every resample of models within each N is the study itself,
    so a bootstrap would give an interval of width 0 around any exponent."""
    spec = _spec([0])
    metrics, samples = _study(1.0, [2, 4, 8], [0])
    kept = {row["trial_id"] for row in metrics if row["split"] == "A"}
    tau, law = _law(spec, [row for row in metrics if row["trial_id"] in kept],
                    [row for row in samples if row["trial_id"] in kept])
    assert law["exponent"] == pytest.approx(1.0, abs=1e-9) and law["units"] == 3
    assert math.isnan(law["ci_low"]) and math.isnan(law["ci_high"])
    assert (law["resampled_over"], law["resamples"]) == (None, 0)
    assert "with no interval: one model at each N value" in law_statement(law)
    assert figures.memorization_law_figure(tau, [law], "t").startswith(b"\x89PNG")


def test_fewer_than_two_n_values_fit_nothing():
    spec = _spec([0, 1])
    metrics, samples = _study(1.0, [4], [0, 1])
    model, rows = _model("never", 8, 0, "A", {100: 0.0, 1000: 0.25})  # N = 8 never reaches the level
    tau, law = _law(spec, [*metrics, model], samples + rows)
    assert (law["n_values"], law["units"], law["censored"], law["resamples"]) == (1, 4, 1, 0)
    assert all(math.isnan(law[key]) for key in ("exponent", "ci_low", "ci_high", "intercept"))


@pytest.mark.parametrize("b, verdict", [(1.0, "agrees with"), (0.5, "is shallower than"), (2.0, "is steeper than")])
def test_the_report_says_whether_the_exponent_agrees_with_bonnaire(b, verdict):
    spec = _spec([0])
    law = _law(spec, *_study(b, [2, 4, 8, 16], [0]))[1]
    assert verdict in law_statement(law) and f"N^{b:.2f}" in law_statement(law)


def test_n_1_alone_is_neither_timed_nor_censored_and_its_figures_draw():
    """N = 1: no second-nearest training image, d1/d2 is NaN at every snapshot; nothing to put on a
    log axis."""
    spec = _spec([0])
    model = {"study_id": "t", "trial_id": "one", "dataset": "discs", "architecture": "u", "n": 1, "seed": 0,
             "pair": 0, "split": "A"}
    samples = [{"study_id": "t", "trial_id": "one", "step": step, "sample_seed": 0, "diverged": False,
                "d1_d2": math.nan, "d1_d2_scale_free": math.nan, "nn_cosine_centered": 1.0} for step in (10, 20)]
    over_time = memorization_time_rows(spec, [model], samples)
    tau = memorization_tau_rows(spec, [model], samples)
    law = memorization_law_rows(spec, tau)
    assert tau[0]["censored"] is None and math.isnan(tau[0]["tau"]) and math.isnan(tau[0]["max_f_mem"])
    assert (law[0]["units"], law[0]["censored"]) == (0, 0) and math.isnan(law[0]["exponent"])
    for png in (figures.memorization_time_figure(over_time, onset_rows(spec, over_time), "t"),
                figures.memorization_law_figure(tau, law, "t")):
        assert png.startswith(b"\x89PNG")
    assert "no fit" in law_statement(law[0])


def test_a_snapshot_whose_samples_mostly_diverged_does_not_time_the_onset():
    """Steps 100 and 300: 0 of 4 memorized. Step 200: three of four samples diverged and the one
    left is a copy (f_mem 1 of a single sample), which must not time the onset, neither the model's
    τ_mem nor the pooled onset of its N; at step 400 half converged, both copies, and that does.
    A second model of the same N, never memorizing and never diverging, is pooled with it."""
    spec = _spec([0])
    model, rows = _model("m", 2, 0, "A", {100: 0.0, 200: 1.0, 300: 0.0, 400: 1.0})
    for row in rows:
        row["diverged"] = ((row["step"] == 200 and row["sample_seed"] > 0)
                           or (row["step"] == 400 and row["sample_seed"] > 1))
    tau = next(row for row in memorization_tau_rows(spec, [model], rows) if row["measure"] == "f_mem")
    assert (tau["first_step"], tau["step_below"]) == (400, 300) and tau["steps_observed"] == 3
    assert tau["tau"] == pytest.approx(math.sqrt(300 * 400)) and tau["max_f_mem"] == 1.0

    other, other_rows = _model("o", 2, 0, "B", {step: 0.0 for step in (100, 200, 300, 400)})
    over_time = memorization_time_rows(spec, [model, other], rows + other_rows)
    pooled = {row["step"]: (row["samples"], row["f_mem"]) for row in over_time}
    # step 200 pools only the other model's 4 samples; the lone copy would make it 1/5
    assert pooled == {100: (8, 0.0), 200: (4, 0.0), 300: (8, 0.0), 400: (6, 2 / 6)}
    low = spec.model_copy(update={"analysis": spec.analysis.model_copy(update={"onset_f_mem": 0.2})})
    [onset] = onset_rows(low, over_time)
    assert onset["onset_step"] == 400  # at level 0.2 the lone copy's 1/5 would make it 200


def test_mlflow_shows_no_interval_once_a_summary_has_none(tmp_path, monkeypatch):
    """A study summarised again (e.g. with one seed instead of two) whose law has no interval any
    more: the study run's CI metrics become NaN instead of keeping the interval logged before; and
    all of its law's metrics do once the summary has no law at all."""
    import time
    from pathlib import Path

    from gahb_scale.design.spec_file import load_spec
    from gahb_scale.study.store import StudyStore
    from gahb_scale.study.track import StudyTracker

    monkeypatch.chdir(tmp_path)
    spec_file = tmp_path / "micro.yaml"
    spec_file.write_text((Path(__file__).resolve().parents[1] / "studies" / "micro.yaml").read_text())
    spec = load_spec(spec_file, results_root=str(tmp_path / "results"))
    tracker = StudyTracker(spec, StudyStore(spec.storage.results_location()))
    law = {"dataset": "d", "architecture": "a", "measure": "f_mem", "exponent": 1.0, "ci_low": 0.8, "ci_high": 1.2,
           "n_values": 4}
    report = {"transition.png": b"png", "index.html": b"html"}
    tracker.log_study("first", [], [law], report)
    time.sleep(0.01)  # a later timestamp: within one millisecond MLflow would keep the larger value
    tracker.log_study("second", [], [{**law, "exponent": 0.9, "ci_low": math.nan, "ci_high": math.nan}], report)
    metrics = tracker.client.get_run(tracker.parent_id).data.metrics
    assert metrics["d/a/tau_mem_exponent"] == 0.9
    assert math.isnan(metrics["d/a/tau_mem_ci_low"]) and math.isnan(metrics["d/a/tau_mem_ci_high"])
    time.sleep(0.01)
    tracker.log_study("third", [], [], report)  # no fit any more (e.g. the snapshot steps taken out)
    metrics = tracker.client.get_run(tracker.parent_id).data.metrics
    assert {key for key, value in metrics.items() if "tau_mem" in key and not math.isnan(value)} == set()
    assert "d/a/tau_mem_exponent" in metrics
