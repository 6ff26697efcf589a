"""Nearest training images of generated samples, the memorization fraction f_mem, and how far a
denoiser is from the memorizing solution.

A sample is called memorized when its nearest training image is much nearer than the second
nearest: d1/d2 < 1/3 (Gu et al. 2023; Bonnaire et al. 2025).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.stats
import torch

from .reference import EmpiricalOptimalDenoiser, training_noise_prior
from .similarity import unit_vectors


@dataclass
class NearestNeighbours:
    """Per-sample nearest training images, all tensors of shape (B,).

    `index_l2`, `d1`, `d2`: index of and L2 distance to the nearest training image, and the distance
    to the second nearest (NaN when the training set has a single image); `ratio` = d1/d2;
    `cosine`: raw cosine with the most similar training image.
    """

    index_l2: torch.Tensor
    d1: torch.Tensor
    d2: torch.Tensor
    ratio: torch.Tensor
    cosine: torch.Tensor


@dataclass
class MemorizationFraction:
    """Share of memorized samples with a bootstrap interval [low, high].

    `defined` is False (and the numbers NaN) when the share cannot be computed, e.g. N < 2.
    """

    value: float
    low: float
    high: float
    defined: bool


@torch.no_grad()
def nearest_neighbours(samples: torch.Tensor, train_images: torch.Tensor,
                       chunk_size: int = 4096) -> NearestNeighbours:
    """Nearest and second-nearest training image (L2) and most similar one (cosine) per sample.

    The training set is visited `chunk_size` images at a time, so at most (B, chunk_size) distances
    exist at once and 10^5 training images fit. Within a chunk, squared distances come from
    ||s||^2 + ||t||^2 - 2 s.t (one matrix product), which loses precision by cancellation for
    near-identical images; it only ranks the candidates, and the distances of the two kept ones are
    recomputed directly from the pixel differences, so an exact copy reports d1 = 0.
    """
    flat_samples = samples.flatten(1)
    unit_samples = unit_vectors(samples)
    sq_norm_samples = flat_samples.square().sum(dim=1, keepdim=True)
    n_samples = len(samples)
    best_sq = torch.full((n_samples, 2), float("inf"), dtype=flat_samples.dtype, device=samples.device)
    best_index = torch.zeros((n_samples, 2), dtype=torch.long, device=samples.device)
    best_cosine = torch.full((n_samples,), -float("inf"), dtype=flat_samples.dtype, device=samples.device)

    for start in range(0, len(train_images), chunk_size):
        chunk = train_images[start:start + chunk_size].to(samples.device, samples.dtype)
        flat_chunk = chunk.flatten(1)
        sq = (sq_norm_samples + flat_chunk.square().sum(dim=1) - 2.0 * flat_samples @ flat_chunk.T).clamp_min(0.0)
        candidates_sq = torch.cat([best_sq, sq], dim=1)
        candidates_index = torch.cat([best_index, torch.arange(start, start + len(chunk), device=samples.device)
                                      .expand(n_samples, -1)], dim=1)
        best_sq, order = candidates_sq.topk(2, dim=1, largest=False)
        best_index = candidates_index.gather(1, order)

        # a zero image has no direction (NaN cosine); it must not hide the chunk's real maximum
        cosines = (unit_samples @ unit_vectors(chunk).T).nan_to_num(nan=-float("inf"))
        best_cosine = torch.maximum(best_cosine, cosines.max(dim=1).values)

    d1 = _distance_to(flat_samples, train_images, best_index[:, 0])
    if len(train_images) > 1:
        d2 = _distance_to(flat_samples, train_images, best_index[:, 1])
    else:  # no second-nearest image exists
        d2 = torch.full_like(d1, float("nan"))
    undefined_cosine = best_cosine == -float("inf")  # a zero sample, or only zero training images
    return NearestNeighbours(index_l2=best_index[:, 0], d1=d1, d2=d2, ratio=d1 / d2,
                             cosine=best_cosine.masked_fill(undefined_cosine, float("nan")))


def _distance_to(flat_samples: torch.Tensor, train_images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """L2 distance of each sample to the training image at `index`, from the pixel differences."""
    chosen = train_images[index.to(train_images.device)].to(flat_samples.device, flat_samples.dtype)
    return torch.linalg.vector_norm(flat_samples - chosen.flatten(1), dim=1)


def memorized_share(ratio: torch.Tensor, threshold: float = 1.0 / 3.0) -> float:
    """Share of samples with d1/d2 < `threshold`, without its interval (the value of
    `memorization_fraction`); NaN when undefined: no samples, or any NaN ratio."""
    ratio = torch.as_tensor(ratio).detach().flatten().cpu().double().numpy()
    if len(ratio) == 0 or np.isnan(ratio).any():
        return float("nan")
    return float((ratio < threshold).astype(float).mean())


def memorization_fraction(ratio: torch.Tensor, threshold: float = 1.0 / 3.0, n_boot: int = 1000, seed: int = 0,
                          confidence: float = 0.95, models: np.ndarray | list | None = None) -> MemorizationFraction:
    """Share of samples with d1/d2 < `threshold` and its percentile-bootstrap `confidence` interval.

    With raw pixel distances this is Bonnaire et al.'s f_mem (their `compute_fmem.py`: two nearest
    training images, d1/d2 < 1/3, 1000 percentile-bootstrap resamples). Any NaN ratio (no
    second-nearest image when N < 2, or 0/0 from a duplicated training image) leaves the share
    undefined: it is reported as such (defined=False, NaN numbers) instead of dropping samples or
    guessing how they count. `scipy.stats.bootstrap` resamples the samples `n_boot` times from a
    generator seeded by `seed`; a single sample has no spread, so its interval is the value itself.

    `models`: the model each sample comes from, for a share pooled over several models. Samples of
    one model are not independent of each other (a model that memorizes copies in most of them), so
    the interval is then a two-stage bootstrap: the models resampled, then each drawn model's
    samples. Resampling the samples alone would read two models that disagree completely (one
    copies every time, the other never) as a share known to a few hundredths. Of the two ways to
    resample groups (Davison & Hinkley 1997, §3.8), resampling the models alone would give two
    models that agree no width at all; two stages count each model's sampling noise twice, so the
    interval is a little wide (about 1.3 times with 8 models that share one rate), and with the two
    models per N of most studies no interval can know how much models vary: read it as rough there.
    """
    value = memorized_share(ratio, threshold)
    if np.isnan(value):
        return MemorizationFraction(value=value, low=value, high=value, defined=False)
    memorized = (torch.as_tensor(ratio).detach().flatten().cpu().double().numpy() < threshold).astype(float)
    if len(memorized) < 2:
        return MemorizationFraction(value=value, low=value, high=value, defined=True)
    rng = np.random.default_rng(seed)
    if models is not None and len(set(models)) > 1:
        _, model = np.unique(np.asarray(models), return_inverse=True)
        sizes = np.bincount(model).astype(np.int64)
        shares = np.bincount(model, weights=memorized) / sizes
        drawn = rng.integers(len(sizes), size=(n_boot, len(sizes)))
        # a drawn model's samples, resampled: as many memorized as a binomial draw at its share
        resampled = rng.binomial(sizes[drawn], shares[drawn]).sum(axis=1) / sizes[drawn].sum(axis=1)
        tail = 50 * (1 - confidence)
        low, high = np.percentile(resampled, [tail, 100 - tail])
        return MemorizationFraction(value=value, low=float(low), high=float(high), defined=True)
    interval = scipy.stats.bootstrap((memorized,), np.mean, n_resamples=n_boot, confidence_level=confidence,
                                     method="percentile", rng=rng).confidence_interval
    return MemorizationFraction(value=value, low=float(interval.low), high=float(interval.high), defined=True)


@dataclass
class TrainingSetMatches:
    """Each image's nearest training images by two measures, and the f_mem each gives.

    `pixels`: raw pixel L2, Bonnaire et al.'s f_mem. `scale_free`: L2 between mean-removed,
    unit-norm images. A bias-free denoiser maps a·x to a·f(x), so every rescaled training image is
    a fixed point of the sampler and a memorizing model may return a training image up to gain and
    offset, which raw distances call new; the scale-free variant calls it memorized.
    """
    pixels: NearestNeighbours
    scale_free: NearestNeighbours
    f_mem: MemorizationFraction
    f_mem_scale_free: MemorizationFraction


def match_training_set(images: torch.Tensor, train_images: torch.Tensor, usable: torch.Tensor | None = None,
                       threshold: float = 1.0 / 3.0, n_boot: int = 1000) -> TrainingSetMatches:
    """Each image's nearest training images and both f_mem over the `usable` ones (default: those
    without NaN; a diverged sample, NaN, is reported, not counted as (non-)memorized). Given a
    model's samples these are its measures; given held-out images, their chance levels: what a
    sample that is a fresh image of the data scores."""
    if usable is None:
        usable = ~images.flatten(1).isnan().any(dim=1)
    pixels = nearest_neighbours(images, train_images)
    scale_free = nearest_neighbours(*(unit_vectors(x, centered=True).reshape(x.shape) for x in (images, train_images)))
    # A flat image has no shape once its mean is removed: it copies no (non-flat) training image, so
    # it counts as not memorized (ratio inf) instead of voiding the scale-free f_mem of every model.
    flat = torch.isnan(scale_free.d1) & usable.to(scale_free.d1.device)
    scale_free.ratio = scale_free.ratio.masked_fill(flat, float("inf"))
    usable = usable.cpu()
    fractions = [memorization_fraction(matches.ratio.cpu()[usable], threshold=threshold, n_boot=n_boot, seed=0)
                 for matches in (pixels, scale_free)]
    return TrainingSetMatches(pixels, scale_free, *fractions)


@torch.no_grad()
def distance_to_memorizer(denoiser: Callable[[torch.Tensor], torch.Tensor], train_images: torch.Tensor,
                          clean: torch.Tensor, sigmas: torch.Tensor, seed: int = 0,
                          noise_range: tuple[float, float] = (0.0, 255.0), noise_schedule: str = "quadratic",
                          rescaled: bool = False, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """How far a blind denoiser is from the memorizing solution, at each noise level of `sigmas`.

    The memorizing solution is what blind training on these N images converges to when it
    optimizes its loss exactly: the MMSE denoiser of the training set itself, σ integrated out
    under the training noise distribution (`EmpiricalOptimalDenoiser` with `training_noise_prior`).
    On a held-out image far from every training image at small σ it infers a large σ and blends
    training images; it is not the posterior mean at the true σ, which no blind denoiser can know.
    On held-out images y = x + σz (one seeded draw z per image, scaled by every σ, as in
    `psnr_curve`) the distance is ‖f(y) − f_mem(y)‖² / ‖σz‖², the squared gap between the two
    outputs in units of the noise energy: ≈ 0 for a memorizer, of order 1 or more when the denoiser
    generalizes. It needs no sampling, so it is a cheap, low-variance transition curve.
    Images go through both denoisers `batch_size` at a time: the memorizer's temporaries grow with
    the batch × its σ grid × its training-image chunk. Returns CPU tensors (len(sigmas),): `sigma`,
    `distance` (mean over images), `distance_std`.
    """
    generator = torch.Generator(device=clean.device).manual_seed(seed)
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    grid, log_prior = training_noise_prior(noise_range, noise_schedule)
    memorizer = EmpiricalOptimalDenoiser(train_images, sigma_grid=grid, log_prior=log_prior,
                                         rescaled=rescaled).to(clean.device)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    per_image = torch.empty(len(sigmas), len(clean), dtype=torch.float64)
    for k, sigma in enumerate(sigmas.tolist()):
        for start in range(0, len(clean), batch_size):
            z = noise[start:start + batch_size]
            noisy = clean[start:start + batch_size] + sigma * z
            gap = (denoiser(noisy).double() - (noisy.double() - memorizer(noisy).double())).flatten(1)
            per_image[k, start:start + len(z)] = (gap.square().sum(dim=1)
                                                  / (sigma * z.double().flatten(1)).square().sum(dim=1)).cpu()
    std = per_image.std(dim=1) if len(clean) > 1 else torch.full((len(sigmas),), float("nan"), dtype=torch.float64)
    return {"sigma": sigmas, "distance": per_image.mean(dim=1), "distance_std": std}
