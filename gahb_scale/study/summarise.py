"""Stage 4, summarise the study (one Ray task): the study-level tables — transition, PSNR slopes,
shuffled-pixel drop, memorization over training time and its onset — from the per-model and
per-pair tables of the whole study."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np
import torch

from ..analysis import MemorizationFraction, memorization_fraction
from .analyse import fraction_columns, optimal_slope
from .spec import DatasetSpec, StudySpec
from .store import StudyStore


from .analyse import fraction_columns, optimal_slope
def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sd of the defined values (a model whose samples all diverged has no NN similarity)."""
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return (float(arr.mean()), float(arr.std())) if arr.size else (math.nan, math.nan)


def summarise_study(spec: StudySpec, location: str) -> dict[str, list[dict]]:
    """Every study-level table, from the per-model and per-pair tables of the whole study (each
    read once; the functions below get only this study's rows)."""
    store = StudyStore(location)
    rows = {name: [r for r in store.rows(name) if r["study_id"] == spec.name]
            for name in ("model_metrics", "samples", "pairs", "pair_bases", "psnr", "snapshot_samples")}
    metrics = rows["model_metrics"]
    over_time = memorization_time_rows(spec, metrics, rows["snapshot_samples"])
    return {"transition": transition_rows(spec, metrics, rows["samples"], rows["pairs"], rows["pair_bases"]),
            "slopes": slope_rows(spec, metrics), "shuffle_psnr": shuffle_rows(spec, metrics, rows["psnr"]),
            "memorization_time": over_time, "memorization_onset": onset_rows(spec, over_time)}


def _slope_theory_applies(dataset: DatasetSpec | None) -> bool:
    """α/(α+1) is the optimal slope only for C^α images with α > 1: this recipe integrates 2-D white
    noise to order β = α for the backgrounds, which are not even continuous for β ≤ 1."""
    return dataset is not None and not math.isnan(optimal_slope(dataset)) and dataset.params["alpha"] > 1


def slope_rows(spec: StudySpec, metrics: list[dict]) -> list[dict]:
    """Fitted PSNR slope per (dataset, architecture, N), next to α/(α+1) where it is known."""
    groups = defaultdict(list)
    for m in metrics:
        groups[(m["dataset"], m["architecture"], m["n"])].append(m)
    datasets = {d.name: d for d in spec.datasets}
    rows = []
    for (dataset, architecture, n), ms in sorted(groups.items()):
        slope, slope_std = _mean_std([m["psnr_slope"] for m in ms])
        rows.append({"study_id": spec.name, "dataset": dataset, "architecture": architecture, "n": n,
                     "alpha": datasets[dataset].params.get("alpha") if dataset in datasets else None,
                     "models": len(ms), "psnr_slope": slope, "psnr_slope_std": slope_std,
                     "optimal_slope": ms[0]["optimal_slope"], "theory_applies": _slope_theory_applies(datasets.get(dataset)),
                     "sigma_low": spec.analysis.slope_sigma_range[0],
                     "sigma_high": spec.analysis.slope_sigma_range[1]})
    return rows


def shuffle_rows(spec: StudySpec, metrics: list[dict], psnr_rows: list[dict]) -> list[dict]:
    """Held-out PSNR of each pixel-shuffled dataset next to its unshuffled twin (same kind and
    parameters), per architecture, N and noise level; `drop` = plain − shuffled (dB)."""
    plain = {(d.kind, json.dumps(d.params, sort_keys=True)): d.name for d in spec.datasets
             if d.pixel_shuffle_seed is None}
    twins = {d.name: plain.get((d.kind, json.dumps(d.params, sort_keys=True))) for d in spec.datasets
             if d.pixel_shuffle_seed is not None}
    group = {m["trial_id"]: (m["dataset"], m["architecture"], m["n"]) for m in metrics}
    outputs = defaultdict(list)
    for r in psnr_rows:
        if r["images"] == "test" and r["trial_id"] in group:
            outputs[(*group[r["trial_id"]], r["sigma"])].append((r["psnr_in"], r["psnr_out"]))
    rows = []
    for (dataset, architecture, n, sigma), values in sorted(outputs.items()):
        twin = twins.get(dataset)
        if twin is None or (twin, architecture, n, sigma) not in outputs:
            continue
        shuffled = float(np.mean([v[1] for v in values]))
        unshuffled = float(np.mean([v[1] for v in outputs[(twin, architecture, n, sigma)]]))
        rows.append({"study_id": spec.name, "dataset": twin, "shuffled_dataset": dataset,
                     "architecture": architecture, "n": n, "sigma": sigma,
                     "psnr_in": float(np.mean([v[0] for v in values])), "psnr_out": unshuffled,
                     "psnr_out_shuffled": shuffled, "drop": unshuffled - shuffled})
    return rows


def _pooled_fraction(spec: StudySpec, ratios: list[float]) -> MemorizationFraction:
    return memorization_fraction(torch.tensor(ratios, dtype=torch.float64), threshold=spec.analysis.memorization_threshold,
                                 n_boot=spec.analysis.bootstrap, seed=0)


def memorization_time_rows(spec: StudySpec, metrics: list[dict], sample_rows: list[dict]) -> list[dict]:
    """f_mem (both measures) per (dataset, architecture, N, training step), pooling the samples of every model."""
    group = {m["trial_id"]: (m["dataset"], m["architecture"], m["n"]) for m in metrics}
    pooled = defaultdict(lambda: defaultdict(list))
    for r in sample_rows:
        if r["trial_id"] in group and not r["diverged"]:
            for column in ("d1_d2", "d1_d2_scale_free", "nn_cosine_centered"):
                pooled[(*group[r["trial_id"]], r["step"])][column].append(r[column])
    rows = []
    for (dataset, architecture, n, step), values in sorted(pooled.items()):
        rows.append({"study_id": spec.name, "dataset": dataset, "architecture": architecture, "n": n, "step": step,
                     "samples": len(values["d1_d2"]),
                     **fraction_columns("f_mem", _pooled_fraction(spec, values["d1_d2"])),
                     **fraction_columns("f_mem_scale_free", _pooled_fraction(spec, values["d1_d2_scale_free"])),
                     "nn_cosine_centered": _mean_std(values["nn_cosine_centered"])[0]})
    return rows


def onset_rows(spec: StudySpec, over_time: list[dict]) -> list[dict]:
    """The first training step at which f_mem reaches `analysis.onset_f_mem`, per (dataset,
    architecture, N), by Bonnaire et al.'s f_mem and by the scale-free one; None when it never
    does within training (or f_mem is undefined, N = 1)."""
    curves = defaultdict(list)
    for r in over_time:
        curves[(r["dataset"], r["architecture"], r["n"])].append(r)
    threshold = spec.analysis.onset_f_mem
    rows = []
    for (dataset, architecture, n), rs in sorted(curves.items()):
        rs.sort(key=lambda r: r["step"])
        onset = {}
        for column in ("f_mem", "f_mem_scale_free"):
            reached = [r["step"] for r in rs if r[column] >= threshold]  # NaN compares False
            onset[column] = reached[0] if reached else None
        defined = [r["f_mem"] for r in rs if not math.isnan(r["f_mem"])]
        rows.append({"study_id": spec.name, "dataset": dataset, "architecture": architecture, "n": n,
                     "onset_step": onset["f_mem"], "onset_step_scale_free": onset["f_mem_scale_free"],
                     "onset_f_mem": threshold, "final_f_mem": rs[-1]["f_mem"],
                     "max_f_mem": max(defined) if defined else math.nan, "steps_observed": len(rs)})
    return rows


def transition_rows(spec: StudySpec, metrics: list[dict], samples: list[dict], pairs: list[dict],
                    bases: list[dict]) -> list[dict]:
    """One row per (dataset, architecture, N): the memorization → generalization transition.

    Both f_mem and their bootstrap intervals pool the samples of every model of the group (A and
    B, all pairs and seeds), diverged samples left out; the other columns average over models
    (PSNR, nearest neighbours, distance to the memorizer, Jacobian) or over sample pairs (A/B).
    """
    pair_group = {p["pair_id"]: (p["dataset"], p["architecture"], p["n"]) for p in pairs}
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    trial_group = {}
    for m in metrics:
        key = (m["dataset"], m["architecture"], m["n"])
        trial_group[m["trial_id"]] = key
        for col in ("train_psnr", "test_psnr", "psnr_gap", "nn_cosine_centered", "memorizer_distance",
                    "memorizer_distance_bias_free", "effective_dim", "symmetry_error", "capped_samples",
                    "diverged_samples"):
            groups[key][col].append(m[col])
    for s in samples:
        if s["trial_id"] in trial_group and not s["diverged"]:
            groups[trial_group[s["trial_id"]]]["ratio"].append(s["d1_d2"])
            groups[trial_group[s["trial_id"]]]["ratio_scale_free"].append(s["d1_d2_scale_free"])
    for p in pairs:
        key = (p["dataset"], p["architecture"], p["n"])
        if p["diverged"]:
            continue
        for col in ("cosine", "cosine_centered", "l2_normalized"):
            groups[key]["ab_" + col].append(p[col])
    for row in bases:
        if row["pair_id"] in pair_group:
            groups[pair_group[row["pair_id"]]]["ab_basis_overlap"].append(row["basis_overlap"])

    rows = []
    for (dataset, architecture, n), g in sorted(groups.items()):
        gap, gap_std = _mean_std(g["psnr_gap"])
        nn_cos, nn_cos_std = _mean_std(g["nn_cosine_centered"])
        ab_c, ab_c_std = _mean_std(g["ab_cosine_centered"])
        rows.append({
            "study_id": spec.name, "dataset": dataset, "architecture": architecture, "n": n,
            "models": len(g["psnr_gap"]), "train_psnr": _mean_std(g["train_psnr"])[0],
            "test_psnr": _mean_std(g["test_psnr"])[0], "psnr_gap": gap, "psnr_gap_std": gap_std,
            "nn_cosine_centered": nn_cos, "nn_cosine_centered_std": nn_cos_std,
            **fraction_columns("f_mem", _pooled_fraction(spec, g["ratio"])),
            **fraction_columns("f_mem_scale_free", _pooled_fraction(spec, g["ratio_scale_free"])),
            "memorizer_distance": _mean_std(g["memorizer_distance"])[0],
            "memorizer_distance_bias_free": _mean_std(g["memorizer_distance_bias_free"])[0],
            "ab_samples": len(g["ab_cosine"]), "ab_cosine": _mean_std(g["ab_cosine"])[0], "ab_cosine_centered": ab_c,
            "ab_cosine_centered_std": ab_c_std, "ab_l2": _mean_std(g["ab_l2_normalized"])[0],
            "ab_basis_overlap": _mean_std(g["ab_basis_overlap"])[0],
            "effective_dim": _mean_std(g["effective_dim"])[0], "symmetry_error": _mean_std(g["symmetry_error"])[0],
            "capped_samples": int(sum(g["capped_samples"])), "diverged_samples": int(sum(g["diverged_samples"])),
        })
    return rows
