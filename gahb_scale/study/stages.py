"""What each stage of a study computes, as plain functions (the runner runs them as Ray tasks).

- `analyze_model`: one trained denoiser — PSNR curves on its own training images and on held-out
  images, samples with the study's shared seeds, nearest training image of every sample, f_mem,
  Jacobian spectra at noisy held-out images.
- `analyze_pair`: the A and B models of one split pair — similarity of their samples seed by seed.
- `transition_rows`: one row per (dataset, architecture, N) from the tables of the whole study.

Each returns table rows (dicts) and leaves arrays for figures in the store; the driver alone
writes the tables.
"""

from __future__ import annotations

import functools
import io
import math
from collections import defaultdict

import numpy as np
import torch

from ..analysis import (denoiser_jacobian, effective_dimensionality, eigen_spectrum, memorization_fraction,
                        nearest_neighbours, principal_angles, psnr_curve, split_pair_similarity, symmetry_error,
                        unit_vectors)
from ..models import build_model, denoise
from ..sampling import sample_kadkhodaie_simoncelli
from .datasets import split_images
from .spec import StudySpec, Trial
from .store import StudyStore, arrays_path, load_arrays, model_path, save_arrays


def read_model_file(store: StudyStore, trial_id: str, device: str | torch.device = "cpu") -> dict:
    """The saved model of a trial: state_dict, losses, steps, timing and device of its training."""
    return torch.load(io.BytesIO(store.read_bytes(model_path(trial_id))), map_location=device, weights_only=False)


def load_model(store: StudyStore, trial: Trial, device: torch.device) -> torch.nn.Module:
    net = build_model(trial.architecture.kind, **trial.architecture.params)
    net.load_state_dict(read_model_file(store, trial.trial_id, device)["state_dict"])
    return net.to(device).eval()


def _normalized(images: torch.Tensor) -> torch.Tensor:
    return unit_vectors(images, centered=True).reshape(images.shape)


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

    s = spec.sampling
    seeds = [s.seed + i for i in range(s.num_samples)]
    sampled = sample_kadkhodaie_simoncelli(net, train.shape[1:], seeds, h0=s.h0, beta=s.beta, sigma_0=s.sigma_0,
                                           sigma_L=s.sigma_L, mean=s.mean, max_steps=s.max_steps, device=device)
    # A bias-free denoiser maps a·x to a·f(x): every rescaled training image is a fixed point, so
    # a memorizing model's samples are training images up to gain and offset. Neighbours and d1/d2
    # are therefore taken between mean-removed, unit-norm images (scale-free, and not fooled by
    # flat regions as the raw cosine is); the raw pixel distance to that neighbour is kept too.
    nn = nearest_neighbours(_normalized(sampled.samples), _normalized(train))
    raw_l2 = (sampled.samples - train[nn.index_l2]).flatten(1).norm(dim=1)
    usable = ~sampled.diverged  # a diverged sample is reported, not counted as (non-)memorized
    f_mem = memorization_fraction(nn.ratio.cpu()[usable], threshold=a.memorization_threshold, n_boot=a.bootstrap,
                                  seed=0)
    final_sigma = [float(row[~row.isnan()][-1]) for row in sampled.sigmas]
    sample_rows = [{**base, "sample_seed": seed, "steps": int(sampled.steps[i]), "hit_cap": bool(sampled.hit_cap[i]),
                    "diverged": bool(sampled.diverged[i]),
                    "final_sigma": final_sigma[i], "nn_index": int(nn.index_l2[i]), "d1": float(nn.d1[i]),
                    "d2": float(nn.d2[i]), "d1_d2": float(nn.ratio[i]),
                    "nn_cosine_centered": float(nn.cosine[i]), "nn_l2_pixels": float(raw_l2[i])}
                   for i, seed in enumerate(seeds)]

    # Jacobians at noisy held-out images; the noise is seeded so A and B see the same inputs.
    clean = test[:a.jacobian_images]
    generator = torch.Generator().manual_seed(0)
    jac_rows, eigen_rows, eigenvectors = [], [], []
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

    save_arrays(store, arrays_path(trial.trial_id), samples=sampled.samples.cpu().numpy(),
                nearest=train[nn.index_l2.to(device)].cpu().numpy(), sample_seeds=np.array(seeds),
                sigma_trajectories=sampled.sigmas.numpy(), jacobian_inputs=clean.cpu().numpy(),
                jacobian_sigmas=np.array(a.jacobian_sigmas), eigenvectors=np.stack(eigenvectors))

    gap = float(np.mean([r["psnr_out"] for r in psnr_rows if r["images"] == "train"])
                - np.mean([r["psnr_out"] for r in psnr_rows if r["images"] == "test"]))
    metrics = {**base, **trial.as_row(), "analysis_id": analysis_id,
               "train_psnr": float(curves["train"]["psnr_out"].mean()), "test_psnr": float(curves["test"]["psnr_out"].mean()),
               "psnr_gap": gap, "nn_cosine_centered": float(nn.cosine.mean()), "nn_l2_pixels": float(raw_l2.mean()),
               "f_mem": f_mem.value, "f_mem_low": f_mem.low, "f_mem_high": f_mem.high, "f_mem_defined": f_mem.defined,
               "capped_samples": sampled.num_capped, "diverged_samples": sampled.num_diverged, "mean_sampler_steps": float(sampled.steps.float().mean()),
               "effective_dim": float(np.mean([r["effective_dim"] for r in jac_rows])),
               "symmetry_error": float(np.mean([r["symmetry_error"] for r in jac_rows]))}
    return {"model_metrics": [metrics], "psnr": psnr_rows, "samples": sample_rows, "jacobian": jac_rows,
            "eigen": eigen_rows}


def analyze_pair(spec: StudySpec, trial_a: Trial, trial_b: Trial, location: str,
                 analysis_id: str) -> dict[str, list[dict]]:
    """Sample-by-sample similarity of models A and B, which were given identical noise seeds."""
    store = StudyStore(location)
    a, b = (load_arrays(store, arrays_path(t.trial_id)) for t in (trial_a, trial_b))
    if not np.array_equal(a["sample_seeds"], b["sample_seeds"]):
        raise RuntimeError(f"pair {trial_a.pair_id}: models were sampled with different seeds")
    sim = split_pair_similarity(torch.from_numpy(a["samples"]), torch.from_numpy(b["samples"]))
    base = {"study_id": spec.name, "pair_id": trial_a.pair_id, "analysis_id": analysis_id, "trial_id_a": trial_a.trial_id,
            "trial_id_b": trial_b.trial_id, "dataset": trial_a.dataset.name,
            "architecture": trial_a.architecture.name, "n": trial_a.n, "pair": trial_a.pair, "seed": trial_a.seed}
    return {"pairs": [{**base, "sample_seed": int(seed), **{k: float(v[i]) for k, v in sim.items()}}
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
    arr = np.asarray(values, dtype=float)
    return (float(arr.mean()), float(arr.std())) if arr.size else (math.nan, math.nan)


def transition_rows(spec: StudySpec, location: str) -> list[dict]:
    """One row per (dataset, architecture, N): the memorization → generalization transition.

    f_mem and its bootstrap interval pool the samples of every model of the group (A and B, all
    pairs and seeds); the other columns average over models (psnr, nn) or over sample pairs (A/B).
    """
    store = StudyStore(location)
    metrics, samples, pairs = store.rows("model_metrics"), store.rows("samples"), store.rows("pairs")
    pair_group = {p["pair_id"]: (p["dataset"], p["architecture"], p["n"]) for p in pairs}
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    trial_group = {}
    for m in metrics:
        if m["study_id"] != spec.name:
            continue
        key = (m["dataset"], m["architecture"], m["n"])
        trial_group[m["trial_id"]] = key
        for col in ("train_psnr", "test_psnr", "psnr_gap", "nn_cosine_centered", "effective_dim", "capped_samples",
                    "diverged_samples"):
            groups[key][col].append(m[col])
    for s in samples:
        if s["study_id"] == spec.name and s["trial_id"] in trial_group and not s["diverged"]:
            groups[trial_group[s["trial_id"]]]["ratio"].append(s["d1_d2"])
    for p in pairs:
        if p["study_id"] == spec.name:
            key = (p["dataset"], p["architecture"], p["n"])
            for col in ("cosine", "cosine_centered", "l2_normalized"):
                groups[key]["ab_" + col].append(p[col])
    for row in store.rows("pair_bases"):
        if row["study_id"] == spec.name and row["pair_id"] in pair_group:
            groups[pair_group[row["pair_id"]]]["ab_basis_overlap"].append(row["basis_overlap"])

    rows = []
    for (dataset, architecture, n), g in sorted(groups.items()):
        f_mem = memorization_fraction(torch.tensor(g["ratio"], dtype=torch.float64),
                                      threshold=spec.analysis.memorization_threshold,
                                      n_boot=spec.analysis.bootstrap, seed=0)
        gap, gap_std = _mean_std(g["psnr_gap"])
        nn_cos, nn_cos_std = _mean_std(g["nn_cosine_centered"])
        ab_c, ab_c_std = _mean_std(g["ab_cosine_centered"])
        rows.append({
            "study_id": spec.name, "dataset": dataset, "architecture": architecture, "n": n,
            "models": len(g["psnr_gap"]), "train_psnr": _mean_std(g["train_psnr"])[0],
            "test_psnr": _mean_std(g["test_psnr"])[0], "psnr_gap": gap, "psnr_gap_std": gap_std,
            "nn_cosine_centered": nn_cos, "nn_cosine_centered_std": nn_cos_std,
            "f_mem": f_mem.value, "f_mem_low": f_mem.low, "f_mem_high": f_mem.high,
            "ab_cosine": _mean_std(g["ab_cosine"])[0], "ab_cosine_centered": ab_c,
            "ab_cosine_centered_std": ab_c_std, "ab_l2": _mean_std(g["ab_l2_normalized"])[0],
            "ab_basis_overlap": _mean_std(g["ab_basis_overlap"])[0],
            "effective_dim": _mean_std(g["effective_dim"])[0], "capped_samples": int(sum(g["capped_samples"])),
            "diverged_samples": int(sum(g["diverged_samples"])),
        })
    return rows
