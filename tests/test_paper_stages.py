"""The per-finding measurements of the study layer, on small inputs with known answers: the
Jacobian against the disc family's tangent space, C^α optimal slopes, the shuffled-pixel drop,
memorization over training time and its onset."""

from __future__ import annotations

import math

import pytest
import torch

from gahb_scale.analysis import disc_tangent_space, eigen_spectrum
from gahb_scale.design.measures import optimal_slope, tangent_rows
from gahb_scale.design.spec_file import parse_spec
from gahb_scale.study.summarise import memorization_time_rows, onset_rows, shuffle_rows, slope_rows

SIZE = 12
PARAMS = torch.tensor([[5.7, 6.2, 3.1, 0.8, 0.2], [6.4, 5.1, 2.6, 0.1, 0.7]], dtype=torch.float64)


def spec(**changes):
    data = {"name": "t", "image_size": 12, "datasets": [{"name": "discs", "kind": "discs"}],
            "architectures": [{"name": "u", "kind": "unet", "params": {"width": 4, "blocks": 1}}],
            "train_sizes": [1, 4]}
    data.update(changes)
    return parse_spec(data)


def rows_for(jacobian, threshold=0.5):
    tangent = disc_tangent_space(PARAMS, SIZE)
    return tangent_rows(jacobian, eigen_spectrum(jacobian), tangent, threshold, {"sigma": 5.0})


def test_projection_onto_the_tangent_space_is_the_optimal_low_noise_denoiser():
    tangent = disc_tangent_space(PARAMS, SIZE)
    rows = rows_for(tangent @ tangent.mT)
    for r in rows:
        assert r["tangent_dims"] == 5
        assert r["energy_inside"] == pytest.approx(1.0, abs=1e-9)
        assert r["trace_inside"] == pytest.approx(5.0, abs=1e-9)
        assert r["trace_total"] == pytest.approx(5.0, abs=1e-9)
        assert r["leading_alignment"] == pytest.approx(1.0, abs=1e-9)
        assert r["eigenvalues_above"] == 5


def test_identity_keeps_everything_beyond_the_tangent_space():
    n = SIZE * SIZE
    rows = rows_for(torch.eye(n, dtype=torch.float64).expand(2, n, n))
    for r in rows:
        assert r["energy_inside"] == pytest.approx(5 / n)
        assert r["trace_inside"] == pytest.approx(5.0)
        assert r["trace_total"] == pytest.approx(n)
        assert r["eigenvalues_above"] == n


def test_shrinkage_outside_the_tangent_space_is_counted_by_the_threshold():
    """0.9 on the tangent space and 0.2 elsewhere: 5 eigenvalues above 0.5, and the energy inside is
    5·0.81 / (5·0.81 + (n−5)·0.04)."""
    n = SIZE * SIZE
    tangent = disc_tangent_space(PARAMS, SIZE)
    projection = tangent @ tangent.mT
    jacobian = 0.9 * projection + 0.2 * (torch.eye(n, dtype=torch.float64) - projection)
    for r in rows_for(jacobian):
        assert r["eigenvalues_above"] == 5
        assert r["leading_alignment"] == pytest.approx(1.0, abs=1e-9)
        assert r["energy_inside"] == pytest.approx(5 * 0.81 / (5 * 0.81 + (n - 5) * 0.04))
        assert r["trace_total"] == pytest.approx(5 * 0.9 + (n - 5) * 0.2)


def test_optimal_slope_is_known_only_for_calpha_with_matching_regularity():
    s = spec(datasets=[{"name": "c1", "kind": "calpha", "params": {"alpha": 1.0}},
                       {"name": "c3", "kind": "calpha", "params": {"alpha": 3.0, "beta": 3.0}},
                       {"name": "mixed", "kind": "calpha", "params": {"alpha": 1.0, "beta": 2.0}},
                       {"name": "discs", "kind": "discs"}])
    values = [optimal_slope(d) for d in s.datasets]
    assert values[0] == pytest.approx(0.5)
    assert values[1] == pytest.approx(0.75)
    assert math.isnan(values[2]) and math.isnan(values[3])


def test_slope_rows_average_models_and_carry_alpha():
    s = spec(datasets=[{"name": "c2", "kind": "calpha", "params": {"alpha": 2.0}},
                       {"name": "c1", "kind": "calpha", "params": {"alpha": 1.0}}])
    metrics = [{"dataset": d, "architecture": "u", "n": 4, "psnr_slope": v, "optimal_slope": a / (a + 1)}
               for d, a in (("c2", 2.0), ("c1", 1.0)) for v in (0.6, 0.7)]
    rows = {r["dataset"]: r for r in slope_rows(s, metrics)}
    row = rows["c2"]
    assert row["alpha"] == 2.0 and row["models"] == 2
    assert row["psnr_slope"] == pytest.approx(0.65) and row["psnr_slope_std"] == pytest.approx(0.05)
    assert row["optimal_slope"] == pytest.approx(2 / 3) and row["theory_applies"]
    # alpha <= 1: the backgrounds are not continuous, alpha/(alpha+1) is shown but flagged
    assert rows["c1"]["optimal_slope"] == pytest.approx(0.5) and not rows["c1"]["theory_applies"]


def test_shuffle_rows_pair_each_shuffled_dataset_with_its_twin():
    s = spec(datasets=[{"name": "plain", "kind": "discs"}, {"name": "shuffled", "kind": "discs",
                                                            "pixel_shuffle_seed": 3},
                       {"name": "other", "kind": "discs", "params": {"antialiasing": 1}, "pixel_shuffle_seed": 1}])
    metrics = [{"trial_id": t, "dataset": d, "architecture": "u", "n": 4}
               for t, d in (("p", "plain"), ("s", "shuffled"), ("o", "other"))]
    psnr = [{"study_id": "t", "trial_id": t, "images": "test", "sigma": 25.0, "psnr_in": 20.0, "psnr_out": out}
            for t, out in (("p", 30.0), ("s", 24.5), ("o", 22.0))]
    psnr.append({"study_id": "t", "trial_id": "p", "images": "train", "sigma": 25.0, "psnr_in": 20.0,
                 "psnr_out": 99.0})
    (row,) = shuffle_rows(s, metrics, psnr)  # "other" has no unshuffled twin (other antialiasing)
    assert (row["dataset"], row["shuffled_dataset"]) == ("plain", "shuffled")
    assert row["psnr_out"] == 30.0 and row["psnr_out_shuffled"] == 24.5 and row["drop"] == pytest.approx(5.5)


def test_memorization_over_time_and_its_onset():
    """f_mem pools both models' samples per step, skips diverged samples; onset = first step at or
    above the level; a curve that never reaches it has no onset; N = 1 (NaN ratios) is undefined."""
    s = spec(analysis={"onset_f_mem": 0.5, "bootstrap": 20})
    metrics = [{"trial_id": t, "dataset": "discs", "architecture": "u", "n": n}
               for t, n in (("a4", 4), ("b4", 4), ("a16", 16), ("a1", 1))]
    ratios = {  # per (trial, step): d1/d2 of two samples; < 1/3 is memorized
        ("a4", 10): [0.9, 0.9], ("b4", 10): [0.1, 0.9],
        ("a4", 20): [0.1, 0.2], ("b4", 20): [0.1, 0.9],
        ("a16", 10): [0.9, 0.9], ("a16", 20): [0.2, 0.9],
        ("a1", 10): [math.nan, math.nan], ("a1", 20): [math.nan, math.nan],
    }
    # the scale-free ratio calls every sample memorized from the first snapshot on
    samples = [{"study_id": "t", "trial_id": t, "step": step, "sample_seed": i, "d1_d2": r,
                "d1_d2_scale_free": r if math.isnan(r) else 0.1, "nn_cosine_centered": 0.5, "diverged": False}
               for (t, step), rs in ratios.items() for i, r in enumerate(rs)]
    samples.append({"study_id": "t", "trial_id": "a16", "step": 20, "sample_seed": 9, "d1_d2": 0.0,
                    "d1_d2_scale_free": 0.0, "nn_cosine_centered": 1.0, "diverged": True})
    samples += [{"study_id": "t", "trial_id": "a16", "step": 30, "sample_seed": i, "d1_d2": 0.0,  # all diverged
                 "d1_d2_scale_free": 0.0, "nn_cosine_centered": 1.0, "diverged": True} for i in range(2)]
    over_time = memorization_time_rows(s, metrics, samples)
    f = {(r["n"], r["step"]): r["f_mem"] for r in over_time}
    assert f[(4, 10)] == 0.25 and f[(4, 20)] == 0.75
    assert f[(16, 10)] == 0.0 and f[(16, 20)] == 0.5  # the diverged sample is left out
    step_30 = next(r for r in over_time if r["step"] == 30)  # kept, with nothing to count
    assert step_30["samples"] == 0 and math.isnan(step_30["f_mem"]) and math.isnan(step_30["nn_cosine_centered"])
    onset = {r["n"]: r for r in onset_rows(s, over_time)}
    assert (onset[16]["steps_observed"], onset[16]["final_f_mem"]) == (2, 0.5)  # step 30 observed nothing
    assert math.isnan(f[(1, 10)])
    onset = {r["n"]: r for r in onset_rows(s, over_time)}
    assert onset[4]["onset_step"] == 20 and onset[16]["onset_step"] == 20
    assert all(r["f_mem_scale_free"] == 1.0 for r in over_time if r["n"] > 1 and r["samples"])
    assert onset[4]["onset_step_scale_free"] == 10 and onset[16]["onset_step_scale_free"] == 10
    assert onset[1]["onset_step"] is None and math.isnan(onset[1]["max_f_mem"])
    s_high = spec(analysis={"onset_f_mem": 0.8, "bootstrap": 20})
    assert all(r["onset_step"] is None for r in onset_rows(s_high, over_time))


def test_disc_parameters_render_the_held_out_images():
    """The tangent space is taken at the parameters of exactly the images the analysis denoises."""
    from gahb_scale.data import render_discs
    from gahb_scale.dataset_kinds import held_out_disc_parameters
    from gahb_scale.design.datasets import split_images

    dataset = spec().datasets[0]
    for pair in (0, 1):
        held_out = split_images(dataset, 16, 4, 6, pair, parts=("test",))["test"]
        params = held_out_disc_parameters(dataset.params, 16, 6, pair)
        assert torch.equal(render_discs(params, 16, dataset.params["antialiasing"]), held_out)


def test_more_eigenvectors_asked_than_pixels_keeps_every_one_and_the_pair_overlaps_fully(tmp_path):
    """eigenvector_images is capped at the number of pixels P, as eigenvalues_kept is: a model
    analysed with more keeps its P eigenvectors, and two such models span the same (whole) space."""
    from gahb_scale.design.trials import analysis_id, expand_trials
    from gahb_scale.models import build_model
    from gahb_scale.study.analyse import analyse_model, compare_pair
    from gahb_scale.study.store import StudyStore, arrays_path, load_arrays, model_path
    from gahb_scale.study.train import save_weights

    small = spec(train_sizes=[2], test_images=4, sampling={"num_samples": 2, "max_steps": 20},
                 analysis={"sigmas": [25, 100], "psnr_images": 2, "jacobian_images": 1, "jacobian_sigmas": [25],
                           "eigenvalues_kept": 145, "eigenvector_images": 145, "bootstrap": 10})
    store, key = StudyStore(str(tmp_path)), analysis_id(small)
    trials = expand_trials(small)
    for trial in trials:
        net = build_model(trial.architecture.kind, seed=0, **trial.architecture.params)
        save_weights(store, model_path(trial.trial_id), net, 0)
        analyse_model(small, trial, str(tmp_path), key)
        assert load_arrays(store, arrays_path(small.name, trial.trial_id))["eigenvectors"].shape[2] == SIZE**2
    rows, _ = compare_pair(small, *sorted(trials, key=lambda t: t.split), str(tmp_path), key)
    assert [(r["k"], r["chance"]) for r in rows["pair_bases"]] == [(SIZE**2, 1.0)]
    assert rows["pair_bases"][0]["basis_overlap"] == pytest.approx(1.0)


def test_the_final_model_closes_memorization_over_time_once_whatever_the_snapshots(tmp_path):
    """The last step of the curve is the final model's, the one every other table measures, once:
    a snapshot there too counted the step twice (an interval too narrow) and, with average_last,
    pooled the weights at that step with their average, two models at one step."""
    from gahb_scale.design.trials import analysis_id, expand_trials
    from gahb_scale.models import build_model
    from gahb_scale.study.analyse import analyse_model
    from gahb_scale.study.store import StudyStore, model_path, snapshot_path
    from gahb_scale.study.train import save_weights

    store = StudyStore(str(tmp_path))
    for snapshots, steps in (([5, 10], [5, 10]), ([5], [5, 10])):  # the last step a snapshot, or not
        small = spec(train_sizes=[2], test_images=2, sampling={"num_samples": 2, "max_steps": 10},
                     training={"steps": 10, "snapshot_steps": snapshots},
                     analysis={"sigmas": [25, 100], "psnr_images": 2, "jacobian_images": 1, "jacobian_sigmas": [25],
                               "eigenvalues_kept": 4, "eigenvector_images": 2, "bootstrap": 10})
        trial = expand_trials(small)[0]
        for step in snapshots:  # weights of their own: other samples than the final model's
            save_weights(store, snapshot_path(trial.trial_id, step),
                         build_model(trial.architecture.kind, seed=step, **trial.architecture.params), step)
        save_weights(store, model_path(trial.trial_id), build_model(trial.architecture.kind, seed=0,
                                                                     **trial.architecture.params), 10)
        rows, _ = analyse_model(small, trial, str(tmp_path), analysis_id(small))
        seen = [(row["step"], row["sample_seed"]) for row in rows["snapshot_samples"]]
        assert sorted(seen) == sorted({(step, seed) for step in steps for seed in (0, 1)})
        final = {row["sample_seed"]: row["d1_d2"] for row in rows["samples"]}
        assert {row["sample_seed"]: row["d1_d2"] for row in rows["snapshot_samples"] if row["step"] == 10} == final
