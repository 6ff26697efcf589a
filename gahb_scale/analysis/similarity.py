"""Similarity of paired images, e.g. the samples of the two models of a split pair for one seed."""

from __future__ import annotations

import math

import torch


def unit_vectors(images: torch.Tensor, centered: bool = False) -> torch.Tensor:
    """Images flattened to rows of unit L2 norm, (B, n); optionally mean-removed first.

    A row with no direction (a black image, or a flat image once centered) becomes NaN rather than
    an arbitrary vector, so every cosine involving it is NaN. Removing the mean of a flat image
    leaves rounding residue of order eps * |x| per pixel, not exact zeros; a row whose norm is
    within that floor is treated as flat instead of pointing along the rounding noise.
    """
    rows = images.flatten(1)
    magnitude = rows.abs().amax(dim=1, keepdim=True)
    if centered:
        rows = rows - rows.mean(dim=1, keepdim=True)
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    rounding_floor = 64 * torch.finfo(rows.dtype).eps * magnitude * math.sqrt(rows.shape[1])
    return torch.where(norms > rounding_floor, rows / norms, float("nan"))


def cosine_similarity(a: torch.Tensor, b: torch.Tensor, centered: bool = False) -> torch.Tensor:
    """Cosine of the angle between paired flattened images, (B,).

    The raw cosine of non-negative images is dominated by their mean grey: two flat images of
    different grey have cosine 1. `centered=True` removes each image's own mean first, which
    compares structure only (an image and its contrast-reversed version give -1).
    """
    return (unit_vectors(a, centered) * unit_vectors(b, centered)).sum(dim=1)


def split_pair_similarity(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-pair similarity of samples `a` and `b` (same seeds, models A and B), each (B,).

    `cosine`: raw cosine (what the paper reports; degenerate for flat images, see
    `cosine_similarity`); `cosine_centered`: cosine of mean-removed images; `l2_normalized`:
    ||a - b||_2 / sqrt(n), the RMS difference on the images' [0, 1] scale, which sees the grey offset the raw
    cosine misses.
    """
    n_pixels = a[0].numel()
    return {
        "cosine": cosine_similarity(a, b),
        "cosine_centered": cosine_similarity(a, b, centered=True),
        "l2_normalized": torch.linalg.vector_norm((a - b).flatten(1), dim=1) / math.sqrt(n_pixels),
    }


def independent_pair_similarity(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """`split_pair_similarity` of disjoint pairs of independent images (image 2i against 2i + 1),
    each (len(images) // 2,): the chance level of the A/B measures.

    Given held-out images of the data, this is what two models that share nothing but the data
    distribution would score if each returned a fresh image of it: two aligned faces, or two discs,
    are alike without either being a copy of the other. An odd last image is left out.
    """
    pairs = len(images) // 2
    return split_pair_similarity(images[0:2 * pairs:2], images[1:2 * pairs:2])
