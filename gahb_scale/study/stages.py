"""What each stage of a study computes, as plain functions (the runner runs them as Ray tasks).

- `analyze_model`: one trained denoiser — PSNR curves (and their slope) on its own training images
  and on held-out images, samples with the study's shared seeds, nearest training image of every
  sample, f_mem, Jacobian spectra at noisy held-out images, on discs the Jacobian against the
  family's tangent space, and with weight snapshots the samples of every snapshot.
- `analyze_pair`: the A and B models of one split pair — similarity of their samples seed by seed
  and of their leading Jacobian eigenvectors.
- `study_tables`: the study-level tables (transition, slopes, shuffled-pixel drop, memorization
  over training time and its onset) from the tables of the whole study.

Each returns table rows (dicts) and leaves arrays for figures in the store; the driver alone
writes the tables.
"""

from __future__ import annotations

import functools
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from ..analysis import (MemorizationFraction, NearestNeighbours, denoiser_jacobian, disc_tangent_space,
                        distance_to_memorizer, effective_dimensionality, eigen_spectrum, energy_in_subspace,
                        fit_psnr_slope, memorization_fraction, nearest_neighbours, optimal_calpha_slope,
                        principal_angles, psnr_curve, split_pair_similarity, symmetry_error, unit_vectors)
from ..models import build_model, denoise
from ..sampling import sample_kadkhodaie_simoncelli
from .datasets import split_images, test_disc_parameters
from .spec import DatasetSpec, StudySpec, Trial
from .store import StudyStore, arrays_path, load_arrays, model_path, save_arrays, snapshot_path


def read_model_file(store: StudyStore, trial_id: str, device: str | torch.device = "cpu",
                    step: int | None = None) -> dict:
    """The saved model of a trial: state_dict, losses, steps, timing and device of its training;
    with `step`, the weight snapshot taken at that step (state_dict and step only)."""
    path = model_path(trial_id) if step is None else snapshot_path(trial_id, step)
    return torch.load(io.BytesIO(store.read_bytes(path)), map_location=device, weights_only=False)


def load_model(store: StudyStore, trial: Trial, device: torch.device, step: int | None = None) -> torch.nn.Module:
    """The trained network in eval mode (with `step`: its snapshot at that step of training)."""
    net = build_model(trial.architecture.kind, **trial.architecture.params)
    net.load_state_dict(read_model_file(store, trial.trial_id, device, step)["state_dict"])
    return net.to(device).eval()


def _normalized(images: torch.Tensor) -> torch.Tensor:
    return unit_vectors(images, centered=True).reshape(images.shape)


@dataclass
class _Matches:
    """Each sample's nearest training images, by two measures (see the README's measure table).

    `pixels`: raw pixel L2, Bonnaire et al.'s f_mem. `scale_free`: L2 between mean-removed,
    unit-norm images. A bias-free denoiser maps a·x to a·f(x), so every rescaled training image is
    a fixed point of the sampler and a memorizing model may return a training image up to gain and
    offset, which raw distances call new; the scale-free variant calls it memorized.
    """
    pixels: NearestNeighbours
    scale_free: NearestNeighbours
    f_mem: MemorizationFraction
    f_mem_scale_free: MemorizationFraction


def _sample_and_match(net: torch.nn.Module, train: torch.Tensor, spec: StudySpec, device: torch.device):
    """Samples with the study's shared seeds, each one's nearest training images, and both f_mem."""
    s, a = spec.sampling, spec.analysis
    seeds = [s.seed + i for i in range(s.num_samples)]
    sampled = sample_kadkhodaie_simoncelli(net, train.shape[1:], seeds, h0=s.h0, beta=s.beta, sigma_0=s.sigma_0,
                                           sigma_L=s.sigma_L, mean=s.mean, max_steps=s.max_steps, device=device)
    pixels = nearest_neighbours(sampled.samples, train)
    scale_free = nearest_neighbours(_normalized(sampled.samples), _normalized(train))
    # A flat sample has no shape once its mean is removed: it copies no (non-flat) training image, so
    # it counts as not memorized (ratio inf) instead of voiding f_mem_scale_free for every model.
    flat = torch.isnan(scale_free.d1) & ~sampled.diverged.to(scale_free.d1.device)
    scale_free.ratio = scale_free.ratio.masked_fill(flat, float("inf"))
    usable = ~sampled.diverged  # a diverged sample is reported, not counted as (non-)memorized
    fractions = [memorization_fraction(nn.ratio.cpu()[usable], threshold=a.memorization_threshold,
                                       n_boot=a.bootstrap, seed=0) for nn in (pixels, scale_free)]
    return seeds, sampled, _Matches(pixels, scale_free, *fractions)


def _fraction_columns(name: str, f: MemorizationFraction) -> dict:
    return {name: f.value, f"{name}_low": f.low, f"{name}_high": f.high}


def optimal_slope(dataset: DatasetSpec) -> float:
    """α/(α+1) for C^α images whose backgrounds are as regular as their boundary; NaN otherwise."""
    p = dataset.params
    if dataset.kind != "calpha" or p.get("beta") not in (None, p["alpha"]):
        return math.nan
    return optimal_calpha_slope(p["alpha"])


def analyze_model(spec: StudySpec, trial: Trial, location: str, analysis_id: str) -> dict[str, list[dict]]:
    store = StudyStore(location)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = load_model(store, trial, device)
    f = functools.partial(denoise, net)
    data = split_images(trial.dataset, spec.image_size, trial.n, spec.test_images, trial.pair,
                        parts=(trial.split, "test"))
    train, test = data[trial.split].to(device), data["test"].to(device)
    base = {"study_id": spec.name, "trial_id": trial.trial_id}
    a = spec.analysis

    sigmas = torch.tensor(a.sigmas) / 255.0
    curves = {name: psnr_curve(f, images[:a.psnr_images], sigmas, seed=0)
              for name, images in (("train", train), ("test", test))}
    psnr_rows = [{**base, "images": name, "sigma": float(s * 255), "psnr_in": float(c["psnr_in"][i]),
                  "psnr_out": float(c["psnr_out"][i]), "psnr_out_std": float(c["psnr_out_std"][i])}
                 for name, c in curves.items() for i, s in enumerate(sigmas)]
    in_range = [i for i, s in enumerate(a.sigmas) if a.slope_sigma_range[0] <= s <= a.slope_sigma_range[1]]
    slope, _ = fit_psnr_slope(curves["test"]["psnr_in"][in_range], curves["test"]["psnr_out"][in_range])

    seeds, sampled, nn = _sample_and_match(net, train, spec, device)
    usable = (~sampled.diverged).to(device)  # NaN means over no sample when every one diverged: undefined
    final_sigma = [float(row[~row.isnan()][-1]) if (~row.isnan()).any() else math.nan for row in sampled.sigmas]
    sample_rows = [{**base, "sample_seed": seed, "steps": int(sampled.steps[i]), "hit_cap": bool(sampled.hit_cap[i]),
                    "diverged": bool(sampled.diverged[i]), "final_sigma": final_sigma[i],
                    "nn_index": int(nn.pixels.index_l2[i]), "d1": float(nn.pixels.d1[i]), "d2": float(nn.pixels.d2[i]),
                    "d1_d2": float(nn.pixels.ratio[i]), "nn_index_scale_free": int(nn.scale_free.index_l2[i]),
                    "d1_d2_scale_free": float(nn.scale_free.ratio[i]),
                    "nn_cosine_centered": float(nn.scale_free.cosine[i])}
                   for i, seed in enumerate(seeds)]

    # Distance to the memorizing solution (the training set's own MMSE denoiser, and the same over
    # the training images at every scale, which a bias-free network can be): no sampling, the same
    # noisy held-out images as the PSNR curve.
    memorizer = {name: distance_to_memorizer(f, train, test[:a.psnr_images], sigmas, seed=0,
                                             noise_range=spec.training.noise_range,
                                             noise_schedule=spec.training.noise_schedule, rescaled=rescaled)
                 for name, rescaled in (("distance", False), ("distance_bias_free", True))}
    memorizer_rows = [{**base, "sigma": float(s * 255)} for s in sigmas]
    for name, m in memorizer.items():
        for i, row in enumerate(memorizer_rows):
            row.update({name: float(m["distance"][i]), f"{name}_std": float(m["distance_std"][i])})

    # Jacobians at noisy held-out images; the noise is seeded so A and B see the same inputs.
    clean = test[:a.jacobian_images]
    tangent = _disc_tangent_basis(spec, trial, len(clean))
    generator = torch.Generator().manual_seed(0)
    jac_rows, eigen_rows, tangent_table, eigenvectors = [], [], [], []
    for sigma in a.jacobian_sigmas:
        noisy = clean + sigma / 255.0 * torch.randn(clean.shape, generator=generator).to(device)
        jac = denoiser_jacobian(f, noisy, chunk_size=256 if device.type == "cuda" else 64)  # bounds memory
        spectrum = eigen_spectrum(jac)
        sym, dim = symmetry_error(jac), effective_dimensionality(jac)
        eigenvectors.append(spectrum.eigenvectors[:, :, :a.eigenvector_images].transpose(1, 2)
                            .reshape(len(clean), a.eigenvector_images, *clean.shape[1:]).cpu().numpy())
        for image in range(len(clean)):
            jac_rows.append({**base, "image": image, "sigma": float(sigma), "symmetry_error": float(sym[image]),
                             "effective_dim": float(dim[image])})
            eigen_rows += [{**base, "image": image, "sigma": float(sigma), "k": k, "eigenvalue": float(value)}
                           for k, value in enumerate(spectrum.eigenvalues[image, :a.eigenvalues_kept].tolist())]
        if tangent is not None:
            tangent_table += tangent_rows(jac, spectrum, tangent.to(device), a.eigenvalue_threshold,
                                          {**base, "sigma": float(sigma)})

    nearest = train[nn.pixels.index_l2.to(device)].masked_fill(~usable[:, None, None, None], float("nan"))
    save_arrays(store, arrays_path(spec.name, trial.trial_id), samples=sampled.samples.cpu().numpy(),
                nearest=nearest.cpu().numpy(), sample_seeds=np.array(seeds),
                sigma_trajectories=sampled.sigmas.numpy(), jacobian_inputs=clean.cpu().numpy(),
                jacobian_sigmas=np.array(a.jacobian_sigmas), eigenvectors=np.stack(eigenvectors))

    over_time = _memorization_over_time(spec, trial, store, train, device, base)
    if over_time:  # the final model closes the curve
        over_time += [{**base, "step": spec.training.steps,
                       **{k: r[k] for k in ("sample_seed", "d1_d2", "d1_d2_scale_free", "nn_cosine_centered", "diverged")}}
                      for r in sample_rows]

    gap = float(np.mean([r["psnr_out"] for r in psnr_rows if r["images"] == "train"])
                - np.mean([r["psnr_out"] for r in psnr_rows if r["images"] == "test"]))
    metrics = {**base, **trial.as_row(), "analysis_id": analysis_id,
               "train_psnr": float(curves["train"]["psnr_out"].mean()), "test_psnr": float(curves["test"]["psnr_out"].mean()),
               "psnr_gap": gap, "psnr_slope": slope, "optimal_slope": optimal_slope(trial.dataset),
               "nn_cosine_centered": float(nn.scale_free.cosine[usable].nanmean()),
               "nn_l2_pixels": float(nn.pixels.d1[usable].mean()),
               **_fraction_columns("f_mem", nn.f_mem), "f_mem_defined": nn.f_mem.defined,
               **_fraction_columns("f_mem_scale_free", nn.f_mem_scale_free),
               "memorizer_distance": float(memorizer["distance"]["distance"].median()),
               "memorizer_distance_bias_free": float(memorizer["distance_bias_free"]["distance"].median()),
               "capped_samples": sampled.num_capped, "diverged_samples": sampled.num_diverged,
               "mean_sampler_steps": float(sampled.steps.float().mean()),
               "effective_dim": float(np.mean([r["effective_dim"] for r in jac_rows])),
               "symmetry_error": float(np.mean([r["symmetry_error"] for r in jac_rows]))}
    return {"model_metrics": [metrics], "psnr": psnr_rows, "samples": sample_rows, "jacobian": jac_rows,
            "eigen": eigen_rows, "disc_tangent": tangent_table, "snapshot_samples": over_time,
            "memorizer_distance": memorizer_rows}


def _disc_tangent_basis(spec: StudySpec, trial: Trial, count: int) -> torch.Tensor | None:
    """Tangent space of the disc family at the first `count` held-out images; None for other data
    (and for shuffled discs, whose images no longer come from `render_discs` directly)."""
    if trial.dataset.kind != "discs" or trial.dataset.pixel_shuffle_seed is not None:
        return None
    params = test_disc_parameters(trial.dataset, spec.image_size, count, trial.pair)
    return disc_tangent_space(params, spec.image_size, trial.dataset.params["antialiasing"]).float()


def tangent_rows(jac: torch.Tensor, spectrum, tangent: torch.Tensor, threshold: float, base: dict) -> list[dict]:
    """How the Jacobian at a noisy disc image relates to the 5-D tangent space of the family there.

    The optimal denoiser at small noise is the projection onto the tangent space: energy inside 1,
    trace inside 5 = total trace, 5 eigenvalues near 1 whose eigenvectors span the tangent space.
    What a network keeps beyond that is what the paper calls its GAHB components.
    """
    dims = tangent.shape[-1]
    energy = energy_in_subspace(jac, tangent)
    trace_inside = (tangent.transpose(-1, -2) @ jac @ tangent).diagonal(dim1=-2, dim2=-1).sum(-1)
    leading = spectrum.eigenvectors[:, :, :dims]
    alignment = torch.cos(principal_angles(leading.double(), tangent.double())).square().mean(-1)
    above = (spectrum.eigenvalues > threshold).sum(-1)
    return [{**base, "image": i, "tangent_dims": dims, "energy_inside": float(energy[i]),
             "trace_inside": float(trace_inside[i]), "trace_total": float(jac[i].diagonal().sum()),
             "leading_alignment": float(alignment[i]), "eigenvalues_above": int(above[i]),
             "eigenvalue_threshold": threshold} for i in range(len(jac))]


def _memorization_over_time(spec: StudySpec, trial: Trial, store: StudyStore, train: torch.Tensor,
                            device: torch.device, base: dict) -> list[dict]:
    """Per snapshot of training (training.snapshot_steps): each sample's d1/d2 and similarity to
    its nearest training image, with the same seeds as the final model's samples."""
    rows = []
    for step in spec.training.snapshot_steps:
        seeds, sampled, nn = _sample_and_match(load_model(store, trial, device, step), train, spec, device)
        rows += [{**base, "step": step, "sample_seed": seed, "d1_d2": float(nn.pixels.ratio[i]),
                  "d1_d2_scale_free": float(nn.scale_free.ratio[i]), "nn_cosine_centered": float(nn.scale_free.cosine[i]),
                  "diverged": bool(sampled.diverged[i])}
                 for i, seed in enumerate(seeds)]
    return rows


def analyze_pair(spec: StudySpec, trial_a: Trial, trial_b: Trial, location: str,
                 analysis_id: str) -> dict[str, list[dict]]:
    """Sample-by-sample similarity of models A and B, which were given identical noise seeds."""
    store = StudyStore(location)
    a, b = (load_arrays(store, arrays_path(spec.name, t.trial_id)) for t in (trial_a, trial_b))
    if not np.array_equal(a["sample_seeds"], b["sample_seeds"]):
        raise RuntimeError(f"pair {trial_a.pair_id}: models were sampled with different seeds")
    samples_a, samples_b = torch.from_numpy(a["samples"]), torch.from_numpy(b["samples"])
    sim = split_pair_similarity(samples_a, samples_b)
    # a seed whose trajectory diverged in either model has no sample to compare: flagged, its
    # similarities NaN, and left out of the transition's A/B means
    diverged = ~(samples_a.flatten(1).isfinite().all(1) & samples_b.flatten(1).isfinite().all(1))
    base = {"study_id": spec.name, "pair_id": trial_a.pair_id, "analysis_id": analysis_id, "trial_id_a": trial_a.trial_id,
            "trial_id_b": trial_b.trial_id, "dataset": trial_a.dataset.name,
            "architecture": trial_a.architecture.name, "n": trial_a.n, "pair": trial_a.pair, "seed": trial_a.seed}
    return {"pairs": [{**base, "sample_seed": int(seed), "diverged": bool(diverged[i]),
                       **{k: math.nan if diverged[i] else float(v[i]) for k, v in sim.items()}}
                      for i, seed in enumerate(a["sample_seeds"])],
            "pair_bases": _basis_overlaps(a, b, {k: base[k] for k in ("study_id", "pair_id", "analysis_id")})}


def _basis_overlaps(a: dict, b: dict, base: dict) -> list[dict]:
    """Generalization seen in the basis: how close the leading Jacobian eigenvectors of A and B are.

    Both models' Jacobians were taken at the same noisy held-out images. Overlap = mean cos² of the
    principal angles between the two k-dimensional leading eigen-subspaces: 1 for the same
    subspace, k/n (given as `chance`) on average for unrelated ones.
    """
    sigmas, (n_sigma, n_images, k) = a["jacobian_sigmas"], a["eigenvectors"].shape[:3]
    rows = []
    for s in range(n_sigma):
        for i in range(n_images):
            u, v = (torch.from_numpy(x["eigenvectors"][s, i]).double().reshape(k, -1).T for x in (a, b))
            cos2 = torch.cos(principal_angles(u, v)).square()
            rows.append({**base, "image": i, "sigma": float(sigmas[s]), "k": k, "basis_overlap": float(cos2.mean()),
                         "chance": k / u.shape[0]})
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sd of the defined values (a model whose samples all diverged has no NN similarity)."""
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return (float(arr.mean()), float(arr.std())) if arr.size else (math.nan, math.nan)


def study_tables(spec: StudySpec, location: str) -> dict[str, list[dict]]:
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
                     **_fraction_columns("f_mem", _pooled_fraction(spec, values["d1_d2"])),
                     **_fraction_columns("f_mem_scale_free", _pooled_fraction(spec, values["d1_d2_scale_free"])),
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
            **_fraction_columns("f_mem", _pooled_fraction(spec, g["ratio"])),
            **_fraction_columns("f_mem_scale_free", _pooled_fraction(spec, g["ratio_scale_free"])),
            "memorizer_distance": _mean_std(g["memorizer_distance"])[0],
            "memorizer_distance_bias_free": _mean_std(g["memorizer_distance_bias_free"])[0],
            "ab_samples": len(g["ab_cosine"]), "ab_cosine": _mean_std(g["ab_cosine"])[0], "ab_cosine_centered": ab_c,
            "ab_cosine_centered_std": ab_c_std, "ab_l2": _mean_std(g["ab_l2_normalized"])[0],
            "ab_basis_overlap": _mean_std(g["ab_basis_overlap"])[0],
            "effective_dim": _mean_std(g["effective_dim"])[0], "symmetry_error": _mean_std(g["symmetry_error"])[0],
            "capped_samples": int(sum(g["capped_samples"])), "diverged_samples": int(sum(g["diverged_samples"])),
        })
    return rows
