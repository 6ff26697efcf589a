"""C^α images: two smooth random backgrounds separated by a C^α boundary curve (the authors' recipe).

Regularity comes from fractional integration: white noise whose Fourier transform is multiplied by
|f|^(-α). The boundary is one such 1-D curve (one row per column); each side is filled with a 2-D
field integrated the same way (exponent β), rescaled so that one side tends to be brighter. The
images are the C^α class of the paper's Fig. 5, whose optimal denoiser has a PSNR slope α/(α+1),
which the analysis compares against. α names the filter's exponent, as in the paper and the
authors' code: a spectrum |f|^(-2α) makes a curve of Hölder regularity about α − 1/2 (fractional
Brownian motion of Hurst index α − 1/2, for 1/2 < α < 3/2) and a 2-D field of about α − 1, so the
boundary is rougher than its nominal α.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ._validate import int_at_least, non_negative_float, positive_float, seeded_rng

# Images are generated this many at a time to bound the size of the FFT temporaries.
_CHUNK = 256


def calpha_images(n: int, alpha: float, size: int = 80, seed: int = 0, beta: float | None = None) -> Tensor:
    """`n` grey C^α images, float32 (n, 1, size, size) in [0, 1], deterministic in `seed`.

    `alpha` sets the boundary's regularity and `beta` (default `alpha`) that of the backgrounds.
    Image i depends only on (seed, i, alpha, beta, size), so a larger `n` extends a smaller one.
    """
    n = int_at_least("n", n, 1)
    # The zero-frequency fix borrows the next frequency, so a side needs at least two pixels.
    size = int_at_least("size", size, 2)
    alpha = positive_float("alpha", alpha)  # α = 0 would make the boundary white noise, no C^α curve
    beta = alpha if beta is None else non_negative_float("beta", beta)
    rng = seeded_rng(seed)
    chunks = []
    for start in range(0, n, _CHUNK):
        # One row of uniforms per image, consumed in order: image i gets the same draws whatever n is.
        draws = rng.random((min(_CHUNK, n - start), _draws_per_image(size)))
        chunks.append(_images_from_draws(draws, alpha, beta, size))
    return torch.from_numpy(np.concatenate(chunks)).unsqueeze(1)


def _draws_per_image(size: int) -> int:
    # curve noise, two background noise fields, side choice, two range bounds
    return size + 2 * size * size + 3


def _images_from_draws(draws: np.ndarray, alpha: float, beta: float, size: int) -> np.ndarray:
    """Float32 (m, size, size) images from an (m, _draws_per_image(size)) block of U(0,1) draws."""
    m = draws.shape[0]
    curve_noise = 2 * draws[:, :size] - 1
    background_noise = (2 * draws[:, size:size + 2 * size * size] - 1).reshape(m, 2, size, size)
    first_is_bright = draws[:, -3] < 0.5
    bright_low, dark_high = draws[:, -2], draws[:, -1]

    mask = _box_smooth_2x2(_mask_below(_contour(curve_noise, alpha, size), size))
    fields = _integrate(background_noise, beta, axes=(-2, -1))
    bright = _rescale(fields[:, 0], bright_low, np.ones(m))
    dark = _rescale(fields[:, 1], np.zeros(m), dark_high)
    side = first_is_bright[:, None, None]
    background1 = np.where(side, bright, dark)
    background2 = np.where(side, dark, bright)
    images = background1 * mask + background2 * (1 - mask)
    # The blend is a convex combination of [0,1] values; clip only guards float rounding.
    return np.clip(images, 0.0, 1.0).astype(np.float32)


def _integrate(noise: np.ndarray, power: float, axes: tuple[int, ...]) -> np.ndarray:
    """Fractionally integrate `noise` over `axes`: multiply its spectrum by (|f|·size)^(-power).

    The authors multiply the fftshift-ed spectrum by a centred filter; applying the unshifted
    filter to the unshifted spectrum is the same product in a different memory order.
    """
    shape = tuple(noise.shape[a] for a in axes)
    spectrum = np.fft.fftn(noise, axes=axes)
    return np.fft.ifftn(spectrum * _integration_filter(shape, power), axes=axes).real


def _integration_filter(shape: tuple[int, ...], power: float) -> np.ndarray:
    """(|f|·size)^(-power) on the FFT grid of a square/1-D `shape`, finite at zero frequency."""
    size = shape[0]
    grids = np.meshgrid(*(np.fft.fftfreq(s) for s in shape), indexing="ij")
    radius = np.sqrt(sum(g ** 2 for g in grids)) * size
    # The zero frequency would be 1/0; like the authors, give it its neighbour's value.
    radius.flat[0] = radius.flat[1]
    return radius ** (-power)


def _contour(curve_noise: np.ndarray, alpha: float, size: int) -> np.ndarray:
    """Boundary row index per column, int (m, size) in [0, size], from (m, size) noise in [-1, 1]."""
    curve = _integrate(curve_noise, alpha, axes=(-1,))
    return np.clip(np.round(curve * size).astype(np.int64) + size // 2, 0, size)


def _mask_below(contour: np.ndarray, size: int) -> np.ndarray:
    """1.0 at rows on or below the contour (row >= contour[col]), 0.0 above: (m, size, size)."""
    rows = np.arange(size)[None, :, None]
    return (rows >= contour[:, None, :]).astype(np.float64)


def _box_smooth_2x2(mask: np.ndarray) -> np.ndarray:
    """2×2 box average keeping the size (reflect-pad one row and column at the far side)."""
    padded = np.pad(mask, ((0, 0), (0, 1), (0, 1)), mode="reflect")
    return (padded[:, :-1, :-1] + padded[:, 1:, :-1] + padded[:, :-1, 1:] + padded[:, 1:, 1:]) / 4


def _rescale(fields: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Affinely map each (size, size) field onto its own range [low[i], high[i]]."""
    minimum = fields.min(axis=(1, 2), keepdims=True)
    maximum = fields.max(axis=(1, 2), keepdims=True)
    unit = (fields - minimum) / (maximum - minimum)
    return low[:, None, None] + (high - low)[:, None, None] * unit
