"""Nearest training images of generated samples, and the memorization fraction f_mem.

A sample is called memorized when its nearest training image is much nearer than the second
nearest: d1/d2 < 1/3 (Gu et al. 2023; Bonnaire et al. 2025).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .similarity import unit_vectors


@dataclass
class NearestNeighbours:
    """Per-sample nearest training images, all tensors of shape (B,).

    `index_l2`, `d1`, `d2`: index of and L2 distance to the nearest training image, and the distance
    to the second nearest (NaN when the training set has a single image); `ratio` = d1/d2;
    `index_cosine`, `cosine`: index of and raw cosine with the most similar training image.
    """

    index_l2: torch.Tensor
    d1: torch.Tensor
    d2: torch.Tensor
    ratio: torch.Tensor
    index_cosine: torch.Tensor
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
    index_cosine = torch.zeros(n_samples, dtype=torch.long, device=samples.device)

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
        chunk_cosine, chunk_argmax = cosines.max(dim=1)
        improved = chunk_cosine > best_cosine
        best_cosine = torch.where(improved, chunk_cosine, best_cosine)
        index_cosine = torch.where(improved, chunk_argmax + start, index_cosine)

    d1 = _distance_to(flat_samples, train_images, best_index[:, 0])
    if len(train_images) > 1:
        d2 = _distance_to(flat_samples, train_images, best_index[:, 1])
    else:  # no second-nearest image exists
        d2 = torch.full_like(d1, float("nan"))
    undefined_cosine = best_cosine == -float("inf")  # a zero sample, or only zero training images
    return NearestNeighbours(index_l2=best_index[:, 0], d1=d1, d2=d2, ratio=d1 / d2, index_cosine=index_cosine,
                             cosine=best_cosine.masked_fill(undefined_cosine, float("nan")))


def _distance_to(flat_samples: torch.Tensor, train_images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """L2 distance of each sample to the training image at `index`, from the pixel differences."""
    chosen = train_images[index.to(train_images.device)].to(flat_samples.device, flat_samples.dtype)
    return torch.linalg.vector_norm(flat_samples - chosen.flatten(1), dim=1)


def memorization_fraction(ratio: torch.Tensor, threshold: float = 1.0 / 3.0, n_boot: int = 1000, seed: int = 0,
                          confidence: float = 0.95) -> MemorizationFraction:
    """Share of samples with d1/d2 < `threshold` and its percentile-bootstrap `confidence` interval.

    Any NaN ratio (no second-nearest image when N < 2, or 0/0 from a duplicated training image)
    leaves the share undefined: it is reported as such (defined=False, NaN numbers) instead of
    dropping samples or guessing how they count. The bootstrap resamples the samples with
    replacement `n_boot` times from a generator seeded by `seed`.
    """
    ratio = torch.as_tensor(ratio).detach().flatten().cpu()
    if len(ratio) == 0 or bool(torch.isnan(ratio).any()):
        nan = float("nan")
        return MemorizationFraction(value=nan, low=nan, high=nan, defined=False)
    memorized = (ratio < threshold).double()
    generator = torch.Generator().manual_seed(seed)
    resampled = torch.randint(len(memorized), (n_boot, len(memorized)), generator=generator)
    boot_shares = memorized[resampled].mean(dim=1)
    tail = (1.0 - confidence) / 2.0
    low, high = torch.quantile(boot_shares, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return MemorizationFraction(value=memorized.mean().item(), low=low, high=high, defined=True)
