"""Stage 2, analyse each model (a Ray task per trained model): PSNR curves (and their slope) on its
own training images, on held-out images and on its partner's training images, samples with the
study's shared seeds, the nearest training images of every sample and both f_mem, the distance to
the memorizing solution, Jacobian spectra at noisy held-out images, on discs the Jacobian against
the family's tangent space, and with weight snapshots the samples of every snapshot. The task returns its rows (`analyse_model`):
the driver alone writes the tables.
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np
import torch

from ..analysis import (EigenSpectrum, MemorizationFraction, TrainingSetMatches, blind_reference_jacobians,
                        denoiser_jacobian, disc_tangent_space, distance_to_memorizer, effective_dimensionality,
                        eigen_spectrum, fit_psnr_slope, independent_pair_similarity, match_training_set,
                        optimal_calpha_slope, psnr_curve, symmetry_error, tangent_space_measures)
from ..dataset_kinds import held_out_disc_parameters
from ..models import build_model, denoise
from ..sampling import sample_kadkhodaie_simoncelli
from . import figures
from .prepare import split_images
from .spec import DatasetSpec, StudySpec
from .store import StudyStore, arrays_path, figure_path, model_path, save_arrays, snapshot_path
from .trials import Trial


def load_model(store: StudyStore, trial: Trial, device: torch.device, step: int | None = None) -> torch.nn.Module:
    """The trained network in eval mode (with `step`: its snapshot at that step of training)."""
    path = model_path(trial.trial_id) if step is None else snapshot_path(trial.trial_id, step)
    saved = torch.load(io.BytesIO(store.read_bytes(path)), map_location=device, weights_only=True)
    net = build_model(trial.architecture.kind, **trial.architecture.params)
    net.load_state_dict(saved["state_dict"])
    return net.to(device).eval()


def trial_title(trial: Trial) -> str:
    """How a model's figures name it."""
    return f"{trial.dataset.name} / {trial.architecture.name}, N={trial.n}, pair {trial.pair}, seed {trial.seed}"


def save_figures(store: StudyStore, spec: StudySpec, trial: Trial, pngs: dict[str, bytes]) -> dict[str, bytes]:
    """Leave a model's figures in the store, where a later run finds them to log them again; returns them."""
    for name, png in pngs.items():  # trusted only once the model's rows are written: no temporary file
        store.write_bytes(figure_path(spec.name, trial.trial_id, name), png, atomic=False)
    return pngs


def _sample_and_match(net: torch.nn.Module, train: torch.Tensor, spec: StudySpec, device: torch.device):
    """Samples with the study's shared seeds, each one's nearest training images, and both f_mem."""
    sampling = spec.sampling
    seeds = [sampling.seed + i for i in range(sampling.num_samples)]
    sampled = sample_kadkhodaie_simoncelli(net, train.shape[1:], seeds, h0=sampling.h0, beta=sampling.beta,
                                           sigma_0=sampling.sigma_0, sigma_L=sampling.sigma_L, mean=sampling.mean,
                                           max_steps=sampling.max_steps, device=device)
    return seeds, sampled, _match(sampled.samples, train, spec, usable=~sampled.diverged)


def _match(images: torch.Tensor, train: torch.Tensor, spec: StudySpec,
           usable: torch.Tensor | None = None) -> TrainingSetMatches:
    return match_training_set(images, train, usable, threshold=spec.analysis.memorization_threshold,
                              n_boot=spec.analysis.bootstrap)


def chance_columns(spec: StudySpec, train: torch.Tensor, held_out: torch.Tensor) -> dict:
    """The chance levels of the A/B and nearest-neighbour measures, from the pair's held-out images
    (never trained on): disjoint pairs of them for the A/B cosines and L2 (N-independent), and the
    held-out images matched against this model's training set for the NN cosine and both f_mem
    (what a fresh image of the data scores: f_mem ≈ 0, the NN cosine rising with N)."""
    ab = independent_pair_similarity(held_out)
    matches = _match(held_out, train, spec)
    return {"ab_cosine_chance": float(ab["cosine"].nanmean()),
            "ab_cosine_centered_chance": float(ab["cosine_centered"].nanmean()),
            "ab_l2_chance": float(ab["l2_normalized"].mean()),
            "nn_cosine_centered_chance": float(matches.scale_free.cosine.nanmean()),
            "f_mem_chance": matches.f_mem.value, "f_mem_scale_free_chance": matches.f_mem_scale_free.value}


def psnr_columns(curves: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean output PSNR over the σ grid on the model's training images and on held-out images, their
    gap, and the gap's chance level: the same difference for its partner's training images, which it
    never saw (`psnr_curve`s named train, test and partner)."""
    mean = {name: float(curves[name]["psnr_out"].mean()) for name in ("train", "test", "partner")}
    return {"train_psnr": mean["train"], "test_psnr": mean["test"], "psnr_gap": mean["train"] - mean["test"],
            "psnr_gap_chance": mean["partner"] - mean["test"]}


def fraction_columns(name: str, f: MemorizationFraction) -> dict:
    return {name: f.value, f"{name}_low": f.low, f"{name}_high": f.high}


def median_over_sigma(values: torch.Tensor) -> float:
    """The median of a curve over the σ grid: on an even-sized grid the mean of the two middle values
    (torch's `median` returns the lower one, which is always one σ's value)."""
    return float(np.median(values.cpu().numpy()))


def optimal_slope(dataset: DatasetSpec) -> float:
    """α/(α+1) for C^α images whose backgrounds are as regular as their boundary; NaN otherwise."""
    params = dataset.params
    if dataset.kind != "calpha" or params.get("beta") not in (None, params["alpha"]):
        return math.nan
    return optimal_calpha_slope(params["alpha"])


def analyse_model(spec: StudySpec, trial: Trial, results: str, analysis_key: str,
                  prepared: dict[str, str] | None = None) -> tuple[dict[str, list[dict]], dict[str, bytes]]:
    """Every per-model table's rows of one trained model (analysed with the settings whose id is
    `analysis_key`), and its figures; its arrays and figures are left in the store at `results`.
    `prepared`: the folders' pools as the run prepared them (`split_images`)."""
    store = StudyStore(results)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = load_model(store, trial, device)
    denoiser = functools.partial(denoise, net)
    analysis = spec.analysis
    # The gap's chance level is the same PSNR difference for images this model never saw: as many of
    # its partner model's training images as it has of its own (a split at a smaller N is a subset of
    # the same split at N). Two sets of 64 images differ by a dB or two on their own.
    partner = "B" if trial.split == "A" else "A"
    data = split_images(trial.dataset, spec.image_size, {trial.split: trial.n,
                                                         partner: min(trial.n, analysis.psnr_images)},
                        spec.test_images, trial.pair, parts=(trial.split, partner, "test"), prepared=prepared)
    train, unseen, test = (data[part].to(device) for part in (trial.split, partner, "test"))
    base = {"study_id": spec.name, "trial_id": trial.trial_id}

    sigmas = torch.tensor(analysis.sigmas) / 255.0
    curves = {name: psnr_curve(denoiser, images[:analysis.psnr_images], sigmas, seed=0)
              for name, images in (("train", train), ("test", test), ("partner", unseen))}
    psnr_rows = [{**base, "images": name, "sigma": float(s * 255), "psnr_in": float(c["psnr_in"][i]),
                  "psnr_out": float(c["psnr_out"][i]), "psnr_out_std": float(c["psnr_out_std"][i])}
                 for name, c in curves.items() for i, s in enumerate(sigmas)]
    low, high = analysis.slope_sigma_range
    in_range = [i for i, sigma in enumerate(analysis.sigmas) if low <= sigma <= high]
    slope, _ = fit_psnr_slope(curves["test"]["psnr_in"][in_range], curves["test"]["psnr_out"][in_range])

    seeds, sampled, matches = _sample_and_match(net, train, spec, device)
    usable = (~sampled.diverged).to(device)  # NaN means over no sample when every one diverged: undefined
    final_sigma = [float(row[~row.isnan()][-1]) if (~row.isnan()).any() else math.nan for row in sampled.sigmas]
    sample_rows = [{**base, "sample_seed": seed, "steps": int(sampled.steps[i]), "hit_cap": bool(sampled.hit_cap[i]),
                    "diverged": bool(sampled.diverged[i]), "final_sigma": final_sigma[i],
                    "nn_index": int(matches.pixels.index_l2[i]), "d1": float(matches.pixels.d1[i]),
                    "d2": float(matches.pixels.d2[i]), "d1_d2": float(matches.pixels.ratio[i]),
                    "nn_index_scale_free": int(matches.scale_free.index_l2[i]),
                    "d1_d2_scale_free": float(matches.scale_free.ratio[i]),
                    "nn_cosine_centered": float(matches.scale_free.cosine[i])}
                   for i, seed in enumerate(seeds)]

    # Distance to the memorizing solution (the training set's own MMSE denoiser, and the same over
    # the training images at every scale, which a bias-free network can be): no sampling, the same
    # noisy held-out images as the PSNR curve.
    memorizer = {name: distance_to_memorizer(denoiser, train, test[:analysis.psnr_images], sigmas, seed=0,
                                             noise_range=spec.training.noise_range,
                                             noise_schedule=spec.training.noise_schedule, rescaled=rescaled)
                 for name, rescaled in (("distance", False), ("distance_bias_free", True))}
    memorizer_rows = [{**base, "sigma": float(s * 255),
                       **{column: float(m[key][i]) for name, m in memorizer.items()
                          for column, key in ((name, "distance"), (f"{name}_std", "distance_std"))}}
                      for i, s in enumerate(sigmas)]

    # Jacobians at noisy held-out images; the noise is seeded so A and B see the same inputs. The
    # two reference denoisers' Jacobians are taken at the same inputs, for their asymmetry.
    clean = test[:analysis.jacobian_images]
    kept_vectors = min(analysis.eigenvector_images, clean[0].numel())  # as eigenvalues_kept: at most P
    chunk_size = 256 if device.type == "cuda" else 64  # bounds memory
    references = blind_reference_jacobians(train, spec.training.noise_range, spec.training.noise_schedule, chunk_size)
    tangent = _disc_tangent_basis(spec, trial, len(clean))
    generator = torch.Generator().manual_seed(0)
    jac_rows, eigen_rows, tangent_table, eigenvectors = [], [], [], []
    for sigma in analysis.jacobian_sigmas:
        noisy = clean + sigma / 255.0 * torch.randn(clean.shape, generator=generator).to(device)
        jac = denoiser_jacobian(denoiser, noisy, chunk_size=chunk_size)
        spectrum = eigen_spectrum(jac)
        sym, dim = symmetry_error(jac), effective_dimensionality(jac)
        reference_sym = {name: symmetry_error(jacobian_of(noisy)) for name, jacobian_of in references.items()}
        eigenvectors.append(spectrum.eigenvectors[:, :, :kept_vectors].transpose(1, 2)
                            .reshape(len(clean), kept_vectors, *clean.shape[1:]).cpu().numpy())
        for image in range(len(clean)):
            jac_rows.append({**base, "image": image, "sigma": float(sigma), "symmetry_error": float(sym[image]),
                             "effective_dim": float(dim[image]), **{f"symmetry_error_{name}": float(values[image])
                                                                    for name, values in reference_sym.items()}})
            eigen_rows += [{**base, "image": image, "sigma": float(sigma), "k": k, "eigenvalue": float(value)}
                           for k, value in enumerate(spectrum.eigenvalues[image, :analysis.eigenvalues_kept].tolist())]
        if tangent is not None:
            tangent_table += tangent_rows(jac, spectrum, tangent.to(device), analysis.eigenvalue_threshold,
                                          {**base, "sigma": float(sigma)})

    nearest = train[matches.pixels.index_l2.to(device)].masked_fill(~usable[:, None, None, None], float("nan"))
    arrays = {"samples": sampled.samples.cpu().numpy(), "nearest": nearest.cpu().numpy(),
              "sample_seeds": np.array(seeds), "sigma_trajectories": sampled.sigmas.numpy(),
              "jacobian_inputs": clean.cpu().numpy(), "jacobian_sigmas": np.array(analysis.jacobian_sigmas),
              "eigenvectors": np.stack(eigenvectors)}
    save_arrays(store, arrays_path(spec.name, trial.trial_id), **arrays)
    title = trial_title(trial)  # this model's figures are drawn here, where its rows and arrays are
    pngs = save_figures(store, spec, trial, {
        "psnr_curves.png": figures.psnr_figure(psnr_rows, title),
        "eigen_spectrum.png": figures.spectrum_figure(eigen_rows, jac_rows, title),
        "eigenvectors.png": figures.eigenvector_figure(arrays["eigenvectors"], arrays["jacobian_sigmas"],
                                                       arrays["jacobian_inputs"], jac_rows, title)})

    over_time = _memorization_over_time(spec, trial, store, train, device, base)
    if spec.training.snapshot_steps_for(trial.n):  # the final model, the one measured above, closes the curve
        over_time += _snapshot_rows(base, spec.training.steps_for(trial.n), seeds, sampled, matches)

    metrics = {**base, **trial.as_row(), "analysis_id": analysis_key, **psnr_columns(curves),
               "psnr_slope": slope, "optimal_slope": optimal_slope(trial.dataset),
               "nn_cosine_centered": float(matches.scale_free.cosine[usable].nanmean()),
               "nn_l2_pixels": float(matches.pixels.d1[usable].mean()),
               **fraction_columns("f_mem", matches.f_mem), "f_mem_defined": matches.f_mem.defined,
               **fraction_columns("f_mem_scale_free", matches.f_mem_scale_free),
               **{f"memorizer_{name}": median_over_sigma(m["distance"]) for name, m in memorizer.items()},
               "capped_samples": sampled.num_capped, "diverged_samples": sampled.num_diverged,
               "mean_sampler_steps": float(sampled.steps.float().mean()),
               "effective_dim": float(np.mean([r["effective_dim"] for r in jac_rows])),
               **{column: float(np.mean([r[column] for r in jac_rows]))
                  for column in ("symmetry_error", *(f"symmetry_error_{name}" for name in references))},
               **chance_columns(spec, train, test)}
    return {"model_metrics": [metrics], "psnr": psnr_rows, "samples": sample_rows, "jacobian": jac_rows,
            "eigen": eigen_rows, "disc_tangent": tangent_table, "snapshot_samples": over_time,
            "memorizer_distance": memorizer_rows}, pngs


def _disc_tangent_basis(spec: StudySpec, trial: Trial, count: int) -> torch.Tensor | None:
    """Tangent space of the disc family at the first `count` held-out images; None for other data
    (and for shuffled discs, whose images no longer come from `render_discs` directly)."""
    if trial.dataset.kind != "discs" or trial.dataset.pixel_shuffle_seed is not None:
        return None
    params = held_out_disc_parameters(trial.dataset.params, spec.image_size, count, trial.pair)
    return disc_tangent_space(params, spec.image_size, trial.dataset.params["antialiasing"]).float()


def tangent_rows(jac: torch.Tensor, spectrum: EigenSpectrum, tangent: torch.Tensor, threshold: float,
                 base: dict) -> list[dict]:
    """The `disc_tangent` rows of Jacobians at noisy disc images (`tangent_space_measures`)."""
    measures = tangent_space_measures(jac, spectrum.eigenvectors, spectrum.eigenvalues, tangent, threshold)
    dims = tangent.shape[-1]
    return [{**base, "image": i, "tangent_dims": dims, **{name: values[i].item() for name, values in measures.items()},
             "eigenvalue_threshold": threshold} for i in range(len(jac))]


def _memorization_over_time(spec: StudySpec, trial: Trial, store: StudyStore, train: torch.Tensor,
                            device: torch.device, base: dict) -> list[dict]:
    """Per snapshot of training (training.snapshot_steps) before the last step: each sample's d1/d2
    and similarity to its nearest training image, with the same seeds as the final model's samples.
    A snapshot at the last step is left to the final model, which closes the curve: the same weights,
    or with `training.average_last` their average, the model every other table measures (both at one
    step would count that step twice, or pool two models there)."""
    rows = []
    for step in (s for s in spec.training.snapshot_steps_for(trial.n) if s < spec.training.steps_for(trial.n)):
        net = load_model(store, trial, device, step)
        rows += _snapshot_rows(base, step, *_sample_and_match(net, train, spec, device))
    return rows


def _snapshot_rows(base: dict, step: int, seeds: list[int], sampled, matches: TrainingSetMatches) -> list[dict]:
    """The `snapshot_samples` rows of the weights at `step`: each sample's d1/d2 and similarity to its
    nearest training image."""
    return [{**base, "step": step, "sample_seed": seed, "d1_d2": float(matches.pixels.ratio[i]),
             "d1_d2_scale_free": float(matches.scale_free.ratio[i]),
             "nn_cosine_centered": float(matches.scale_free.cosine[i]), "diverged": bool(sampled.diverged[i])}
            for i, seed in enumerate(seeds)]
