"""What a study measures of one trained model and of one split pair, as the analyse and compare
stages take it (`gahb_scale.study.analyse` runs these as Ray tasks and keeps what they return in
the results store); usable from a notebook on any trained network.

Of a model (`measure_model`): PSNR curves (and their slope) on its own training images, on held-out
images and on its partner's training images, samples with the study's shared seeds, the nearest
training images of every sample and both f_mem, the distance to the memorizing solution, Jacobian
spectra at noisy held-out images, on discs the Jacobian against the family's tangent space, and
with weight snapshots the samples of every snapshot. Of a pair (`compare_models`): the A and B
models' samples seed by seed, and their leading Jacobian eigenvectors at the same noisy held-out
images.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np
import torch

from .. import figures
from ..analysis import (EigenSpectrum, MemorizationFraction, TrainingSetMatches, blind_reference_jacobians,
                        denoiser_jacobian, disc_tangent_space, distance_to_memorizer, effective_dimensionality,
                        eigen_spectrum, fit_psnr_slope, independent_pair_similarity, match_training_set,
                        optimal_calpha_slope, principal_angles, psnr_curve, split_pair_similarity, symmetry_error,
                        tangent_space_measures)
from ..dataset_kinds import held_out_disc_parameters
from ..models import denoise
from ..sampling import sample_kadkhodaie_simoncelli
from .datasets import split_images
from .spec import DatasetSpec, StudySpec
from .trials import Trial


def trial_title(trial: Trial) -> str:
    """How a model's figures name it."""
    return f"{trial.dataset.name} / {trial.architecture.name}, N={trial.n}, pair {trial.pair}, seed {trial.seed}"


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


def model_images(spec: StudySpec, trial: Trial, prepared: dict[str, dict] | None = None) -> dict[str, torch.Tensor]:
    """The images a model is measured on: its own split, its partner's first training images, as many
    as it has of its own up to `analysis.psnr_images` (never seen by it: the PSNR gap's chance level;
    a split at a smaller N is a subset of the same split at N), and the pair's held-out set.
    `prepared`: `split_images`."""
    partner = trial.partner_split
    return split_images(trial.dataset, spec.image_size, {trial.split: trial.n,
                                                         partner: min(trial.n, spec.analysis.psnr_images)},
                        spec.test_images, trial.pair, parts=(trial.split, partner, "test"), prepared=prepared)


def measure_model(spec: StudySpec, trial: Trial, net: torch.nn.Module, data: dict[str, torch.Tensor],
                  analysis_key: str, snapshot: Callable[[int], torch.nn.Module] | None = None
                  ) -> tuple[dict[str, list[dict]], dict[str, np.ndarray], dict[str, bytes]]:
    """Every per-model table's rows of one trained network (analysed with the settings whose id is
    `analysis_key`), its arrays (samples, nearest training images, Jacobian eigenvectors: what the
    pair's comparison draws on) and its figures. `data`: `model_images`; `snapshot(step)`: the
    network at each of `training.snapshot_steps` (memorization over time; needed only where
    the spec sets them). Networks are measured in eval mode: `net` is left in it."""
    if snapshot is None and (steps := _snapshot_steps(spec, trial)):
        raise ValueError(f"the spec sets training.snapshot_steps: measure_model needs `snapshot`, the network at "
                         f"each of steps {steps}")
    net.eval()  # in training mode, batch norm would normalise by each batch and move its running statistics
    device = next(net.parameters()).device
    denoiser = functools.partial(denoise, net)
    analysis = spec.analysis
    # The gap's chance level is the same PSNR difference for images this model never saw: its
    # partner's training images. Two sets of 64 images differ by a dB or two on their own.
    train, unseen, test = (data[part].to(device) for part in (trial.split, trial.partner_split, "test"))
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
    title = trial_title(trial)
    pngs = {"psnr_curves.png": figures.psnr_figure(psnr_rows, title),
            "eigen_spectrum.png": figures.spectrum_figure(eigen_rows, jac_rows, title),
            "eigenvectors.png": figures.eigenvector_figure(arrays["eigenvectors"], arrays["jacobian_sigmas"],
                                                           arrays["jacobian_inputs"], jac_rows, title)}

    over_time = _memorization_over_time(spec, trial, snapshot, train, base)
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
            "memorizer_distance": memorizer_rows}, arrays, pngs


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


def _memorization_over_time(spec: StudySpec, trial: Trial, snapshot: Callable[[int], torch.nn.Module] | None,
                            train: torch.Tensor, base: dict) -> list[dict]:
    """Per snapshot of training (training.snapshot_steps) before the last step: each sample's d1/d2
    and similarity to its nearest training image, with the same seeds as the final model's samples.
    A snapshot at the last step is left to the final model, which closes the curve: the same weights,
    or with `training.average_last` their average, the model every other table measures (both at one
    step would count that step twice, or pool two models there)."""
    rows = []
    for step in _snapshot_steps(spec, trial):
        rows += _snapshot_rows(base, step, *_sample_and_match(snapshot(step).eval(), train, spec, train.device))
    return rows


def _snapshot_steps(spec: StudySpec, trial: Trial) -> list[int]:
    """The snapshot steps measured from a snapshot: those before the last step (`_memorization_over_time`)."""
    return [step for step in spec.training.snapshot_steps_for(trial.n) if step < spec.training.steps_for(trial.n)]


def _snapshot_rows(base: dict, step: int, seeds: list[int], sampled, matches: TrainingSetMatches) -> list[dict]:
    """The `snapshot_samples` rows of the weights at `step`: each sample's d1/d2 and similarity to its
    nearest training image."""
    return [{**base, "step": step, "sample_seed": seed, "d1_d2": float(matches.pixels.ratio[i]),
             "d1_d2_scale_free": float(matches.scale_free.ratio[i]),
             "nn_cosine_centered": float(matches.scale_free.cosine[i]), "diverged": bool(sampled.diverged[i])}
            for i, seed in enumerate(seeds)]


def compare_models(spec: StudySpec, trial_a: Trial, trial_b: Trial, arrays_a: dict[str, np.ndarray],
                   arrays_b: dict[str, np.ndarray], analysis_key: str
                   ) -> tuple[dict[str, list[dict]], dict[str, dict[str, bytes]]]:
    """Sample-by-sample similarity of models A and B (`measure_model`'s arrays of each), which were
    given identical noise seeds (rows of `pairs` and `pair_bases`), and each model's sample figure
    beside the other's, by trial id."""
    if not np.array_equal(arrays_a["sample_seeds"], arrays_b["sample_seeds"]):
        raise RuntimeError(f"pair {trial_a.pair_id}: models were sampled with different seeds")
    samples_a, samples_b = torch.from_numpy(arrays_a["samples"]), torch.from_numpy(arrays_b["samples"])
    similarity = split_pair_similarity(samples_a, samples_b)
    # a seed whose trajectory diverged in either model has no sample to compare: flagged, its
    # similarities NaN, and left out of the transition's A/B means
    diverged = ~(samples_a.flatten(1).isfinite().all(1) & samples_b.flatten(1).isfinite().all(1))
    base = {"study_id": spec.name, "pair_id": trial_a.pair_id, "analysis_id": analysis_key,
            "trial_id_a": trial_a.trial_id, "trial_id_b": trial_b.trial_id, "dataset": trial_a.dataset.name,
            "architecture": trial_a.architecture.name, "n": trial_a.n, "pair": trial_a.pair, "seed": trial_a.seed}
    pngs = {this[0].trial_id: {"samples.png": _sample_figure(this, other)} for this, other in
            (((trial_a, arrays_a), (trial_b, arrays_b)), ((trial_b, arrays_b), (trial_a, arrays_a)))}
    return {"pairs": [{**base, "sample_seed": int(seed), "diverged": bool(diverged[i]),
                       **{name: math.nan if diverged[i] else float(values[i]) for name, values in similarity.items()}}
                      for i, seed in enumerate(arrays_a["sample_seeds"])],
            "pair_bases": _basis_overlaps(arrays_a, arrays_b,
                                          {k: base[k] for k in ("study_id", "pair_id", "analysis_id")})}, pngs


def _sample_figure(this: tuple[Trial, dict], other: tuple[Trial, dict]) -> bytes:
    """A model's samples beside its partner's (same seeds) and its nearest training images."""
    (trial, arrays), (partner, partner_arrays) = this, other
    shown = min(8, len(arrays["sample_seeds"]))
    columns = {f"model {trial.split} (this)": arrays["samples"], f"model {partner.split}": partner_arrays["samples"],
               f"nearest training image of {trial.split}": arrays["nearest"]}
    return figures.sample_grid_figure({name: images[:shown] for name, images in columns.items()},
                                      arrays["sample_seeds"][:shown], trial_title(trial))


def _basis_overlaps(arrays_a: dict, arrays_b: dict, base: dict) -> list[dict]:
    """Generalization seen in the basis: how close the leading Jacobian eigenvectors of A and B are.

    Both models' Jacobians were taken at the same noisy held-out images. Overlap = mean cos² of the
    principal angles between the two k-dimensional leading eigen-subspaces: 1 for the same
    subspace, k/P for P pixels (given as `chance`) on average for unrelated ones.
    """
    sigmas, (n_sigma, n_images, k) = arrays_a["jacobian_sigmas"], arrays_a["eigenvectors"].shape[:3]
    rows = []
    for s in range(n_sigma):
        for image in range(n_images):
            u, v = (torch.from_numpy(arrays["eigenvectors"][s, image]).double().reshape(k, -1).T
                    for arrays in (arrays_a, arrays_b))
            cos2 = torch.cos(principal_angles(u, v)).square()
            rows.append({**base, "image": image, "sigma": float(sigmas[s]), "k": k,
                         "basis_overlap": float(cos2.mean()), "chance": k / u.shape[0]})
    return rows
