"""Grey discs on a grey background, by the authors' recipe: a 5-parameter image family.

Parameters, one row per image: (centre x, centre y, radius, foreground grey, background grey),
positions in output-pixel units with pixel (row i, column j) covering [j, j+1) × [i, i+1), so its
centre is at (j + 0.5, i + 0.5), as drawn on the fine grid. The db2 low-pass is not centred on the
pixels it averages, so the rendered disc sits (2 − √3)/2 · (1 − 2^−antialiasing) ≈ 0.1 pixel up and
left of its parameters (`DB2_OFFSET`); `render_discs` is the definition, so the family and its
tangent space are unaffected. As in the authors' `circle_dataset`, the centre keeps the whole disc
inside the image, both greys are U(0, 1), and the disc is drawn hard on a grid `2**antialiasing` times
finer, then low-passed and down-sampled with the db2 wavelet `antialiasing` times. The radius is
U[3, (size − 3)/2) output pixels. The authors draw theirs on the fine grid, U[3, (2^k·size − 3)//2)
fine pixels, so from 3/2^k output pixels (0.75 at the default k = 2) to about size/2: their family
also holds discs under two pixels across, which this one leaves out. Because the family is
5-dimensional, a good denoiser's Jacobian should act on it as a projection onto the 5-D tangent
space, computed through `render_discs`.
"""

from __future__ import annotations

import numpy as np
import pywt
import torch
from torch import Tensor

from ..errors import UserInputError
from ..limits import MAX_DISC_ANTIALIASING
from ._validate import int_at_least, seeded_rng

# The authors' discs: drawn on a 2**2 times finer grid, then low-passed and halved twice.
DISC_ANTIALIASING = 2
MIN_RADIUS = 3.0  # pixels; the largest radius is (size - 3) / 2
MIN_IMAGE_SIZE = 10  # the smallest size whose radius range [3, (size - 3) / 2) is not empty
# Each db2 halving puts output pixel k at input position 2k + 1 + (2 - √3)/2 instead of 2k + 1.
DB2_OFFSET = (2 - 3 ** 0.5) / 2
PARAMETER_NAMES = ("centre_x", "centre_y", "radius", "foreground", "background")

# Fine-grid pixels rendered per chunk; bounds the temporaries at a few tens of MB.
_MAX_FINE_PIXELS_PER_CHUNK = 2 ** 22


def disc_images(n: int, size: int, seed: int = 0, antialiasing: int = DISC_ANTIALIASING) -> tuple[Tensor, Tensor]:
    """`n` disc images, float32 (n, 1, size, size), and their float32 (n, 5) parameters.

    Greys are in [0, 1] away from the edge; db2's negative taps make the edge overshoot by up to
    about 10% of the disc's contrast, as in the authors' data (not clipped: clipping would bend the
    family and its tangent space).

    Deterministic in `seed`, and image i does not depend on `n`. `render_discs(params, size,
    antialiasing)` reproduces the images exactly.
    """
    n = int_at_least("n", n, 1)
    size = int_at_least("size", size, MIN_IMAGE_SIZE)
    # Row i of the uniforms belongs to image i, so a larger n extends a smaller one.
    u = seeded_rng(seed).random((n, 5))
    radius = MIN_RADIUS + ((size - MIN_RADIUS) / 2 - MIN_RADIUS) * u[:, 2]
    centre_x = radius + (size - 2 * radius) * u[:, 0]
    centre_y = radius + (size - 2 * radius) * u[:, 1]
    params = torch.from_numpy(np.stack([centre_x, centre_y, radius, u[:, 3], u[:, 4]], axis=1)).float()
    return render_discs(params, size, antialiasing), params


def render_discs(params: Tensor, size: int, antialiasing: int = DISC_ANTIALIASING) -> Tensor:
    """Render (n, 5) disc parameters as (n, 1, size, size) images in the parameters' float dtype.

    The authors threshold the disc on the fine grid; here a fine pixel's value ramps linearly over
    one fine-pixel width across the edge instead of jumping. After the low-pass the two differ
    only below the output resolution, but the ramp makes every image a continuous function of all
    five parameters, so finite differences along the family (its tangent space) are meaningful.
    Pass float64 parameters for float64 images.
    """
    size = int_at_least("size", size, 1)
    antialiasing = int_at_least("antialiasing", antialiasing, 0)
    if antialiasing > MAX_DISC_ANTIALIASING:
        raise UserInputError(f"antialiasing must be at most {MAX_DISC_ANTIALIASING}, got {antialiasing}")
    if params.ndim != 2 or params.shape[1] != len(PARAMETER_NAMES) or not params.is_floating_point():
        raise ValueError(f"disc params must be a float tensor of shape (n, 5), got {params.dtype} {tuple(params.shape)}")
    fine = size * 2 ** antialiasing
    chunk = max(1, _MAX_FINE_PIXELS_PER_CHUNK // (fine * fine))
    return torch.cat([_render_chunk(p, size, antialiasing) for p in params.split(chunk)])


def _render_chunk(params: Tensor, size: int, antialiasing: int) -> Tensor:
    scale = 2 ** antialiasing
    centre_x, centre_y, radius, foreground, background = params.unbind(1)
    centres = torch.arange(size * scale, dtype=params.dtype) + 0.5  # fine-pixel centres, fine units
    distance = torch.hypot(centres[None, None, :] - scale * centre_x[:, None, None],
                           centres[None, :, None] - scale * centre_y[:, None, None])
    coverage = (scale * radius[:, None, None] - distance + 0.5).clamp(0.0, 1.0)
    image = background[:, None, None] + (foreground - background)[:, None, None] * coverage
    return torch.from_numpy(wavelet_downsample(image.numpy(), antialiasing)).unsqueeze(1)


def wavelet_downsample(images: np.ndarray, times: int) -> np.ndarray:
    """Low-pass and halve (..., H, W) images `times` times with the db2 wavelet (the authors' anti-aliasing).

    Each step keeps the approximation coefficients of one 2-D db2 decomposition, divided by 2 so
    a flat image keeps its grey (the low-pass filter sums to √2 per axis). Borders are extended
    symmetrically, which yields H/2 + 1 coefficients per axis; dropping the first leaves output
    pixel k centred at fine position 2k + 0.63, a box filter's 2k + 0.5 up to `DB2_OFFSET` = 0.13
    fine pixel.
    """
    for _ in range(times):
        height, width = images.shape[-2:]
        if height % 2 or width % 2:
            raise ValueError(f"wavelet down-sampling needs even image sides, got {height}x{width}")
        low, _ = pywt.dwt2(images, "db2", mode="symmetric", axes=(-2, -1))
        images = low[..., 1:1 + height // 2, 1:1 + width // 2] / 2.0
    return np.ascontiguousarray(images)
