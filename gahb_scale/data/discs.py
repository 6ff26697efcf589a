"""Anti-aliased grey discs on a grey background: a 5-parameter image family.

Parameters, one row per image: (centre x, centre y, radius, foreground grey, background grey),
positions in output-pixel units with pixel (row i, column j) covering [j, j+1) × [i, i+1), so its
centre is at (j + 0.5, i + 0.5). Because the family is 5-dimensional, a good denoiser's Jacobian
should act on it as a projection onto the 5-D tangent space, computed through `render_discs`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import UserInputError
from ._validate import int_at_least, seeded_rng

RADIUS_RANGE = (0.10, 0.35)  # radius as a fraction of the image side
PARAMETER_NAMES = ("centre_x", "centre_y", "radius", "foreground", "background")

# Output pixels rendered per chunk; bounds the temporaries at a few tens of MB.
_MAX_PIXELS_PER_CHUNK = 2 ** 22


def disc_images(n: int, size: int, seed: int = 0, supersample: int = 4) -> tuple[Tensor, Tensor]:
    """`n` disc images, float32 (n, 1, size, size) in [0, 1], and their float32 (n, 5) parameters.

    The radius is U(0.10·size, 0.35·size) and the centre is uniform among the positions that keep
    the whole disc inside the image; both greys are U(0, 1). Deterministic in `seed`, and image i
    does not depend on `n`. `render_discs(params, size, supersample)` reproduces the images exactly.
    """
    n = int_at_least("n", n, 1)
    size = int_at_least("size", size, 1)
    # Row i of the uniforms belongs to image i, so a larger n extends a smaller one.
    u = seeded_rng(seed).random((n, 5))
    low, high = RADIUS_RANGE
    radius = size * (low + (high - low) * u[:, 2])
    centre_x = radius + (size - 2 * radius) * u[:, 0]
    centre_y = radius + (size - 2 * radius) * u[:, 1]
    params = torch.from_numpy(np.stack([centre_x, centre_y, radius, u[:, 3], u[:, 4]], axis=1)).float()
    return render_discs(params, size, supersample), params


def render_discs(params: Tensor, size: int, supersample: int = 4) -> Tensor:
    """Render (n, 5) disc parameters as (n, 1, size, size) images in the parameters' float dtype.

    Each output pixel averages `supersample`² sub-pixels; each sub-pixel's disc coverage ramps
    linearly across one sub-pixel width at the edge instead of jumping, so the image is a
    continuous, piecewise-smooth function of all five parameters and finite differences along
    the family are meaningful. Pass float64 parameters for float64 images.
    """
    size = int_at_least("size", size, 1)
    supersample = int_at_least("supersample", supersample, 1)
    if params.ndim != 2 or params.shape[1] != len(PARAMETER_NAMES) or not params.is_floating_point():
        raise UserInputError(f"disc params must be a float tensor of shape (n, 5), got {params.dtype} {tuple(params.shape)}")
    chunk = max(1, _MAX_PIXELS_PER_CHUNK // (size * size))
    return torch.cat([_render_chunk(p, size, supersample) for p in params.split(chunk)])


def _render_chunk(params: Tensor, size: int, supersample: int) -> Tensor:
    centre_x, centre_y, radius, foreground, background = params.unbind(1)
    coverage = _coverage(centre_x, centre_y, radius, size, supersample)
    shade = foreground - background
    return (background[:, None, None] + shade[:, None, None] * coverage).unsqueeze(1)


def _coverage(centre_x: Tensor, centre_y: Tensor, radius: Tensor, size: int, supersample: int) -> Tensor:
    """Fraction of each pixel inside its disc, (n, size, size), averaged over supersample² sub-pixels.

    A pixel whose centre is a pixel or more from the edge has every sub-pixel (at most 0.71 px
    from its centre) fully inside or outside, so only the thin band around the edge is
    supersampled; that gives the full supersampled result at a few percent of the cost.
    """
    centres = torch.arange(size, dtype=radius.dtype, device=radius.device) + 0.5
    distance = torch.hypot(centres[None, None, :] - centre_x[:, None, None],
                           centres[None, :, None] - centre_y[:, None, None])
    coverage = (distance <= radius[:, None, None]).to(radius.dtype)
    image, row, col = ((distance - radius[:, None, None]).abs() < 1).nonzero(as_tuple=True)
    offsets = (torch.arange(supersample, dtype=radius.dtype, device=radius.device) + 0.5) / supersample - 0.5
    sub_distance = torch.hypot(centres[col, None, None] + offsets[None, None, :] - centre_x[image, None, None],
                               centres[row, None, None] + offsets[None, :, None] - centre_y[image, None, None])
    ramp = ((radius[image, None, None] - sub_distance) * supersample + 0.5).clamp(0.0, 1.0)
    coverage[image, row, col] = ramp.mean(dim=(1, 2))
    return coverage
