"""Slope of output PSNR against input PSNR, and its optimal value on C^alpha images.

The optimal denoiser of C^alpha images has MSE proportional to sigma^(2 alpha / (alpha + 1))
(Korostelev & Tsybakov 1993), so in decibels output PSNR = alpha/(alpha+1) * input PSNR + const.
"""

from __future__ import annotations

from typing import Sequence

import torch



def fit_psnr_slope(psnr_in: torch.Tensor | Sequence[float], psnr_out: torch.Tensor | Sequence[float],
                   psnr_in_range: tuple[float, float] | None = None) -> tuple[float, float]:
    """Least-squares line `psnr_out = slope * psnr_in + intercept`; returns (slope, intercept).

    `psnr_in_range` = (low, high) keeps only the points with low <= psnr_in <= high, e.g. to fit the
    power-law regime and leave out the saturated ends of the curve. Fewer than two distinct input
    PSNRs, or a non-finite point among those kept, is an error rather than a silent fit.
    """
    x = torch.as_tensor(psnr_in, dtype=torch.float64).flatten().cpu()
    y = torch.as_tensor(psnr_out, dtype=torch.float64).flatten().cpu()
    if x.shape != y.shape:
        raise ValueError(f"psnr_in and psnr_out differ in length ({len(x)} vs {len(y)})")
    if psnr_in_range is not None:
        low, high = psnr_in_range
        kept = (x >= low) & (x <= high)
        x, y = x[kept], y[kept]
    if not bool(torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("cannot fit a PSNR slope through non-finite PSNR values")
    if len(torch.unique(x)) < 2:
        raise ValueError(f"a PSNR slope needs at least two distinct input PSNRs in range {psnr_in_range}")
    x_centred, y_centred = x - x.mean(), y - y.mean()
    slope = (x_centred * y_centred).sum() / x_centred.square().sum()
    intercept = y.mean() - slope * x.mean()
    return slope.item(), intercept.item()


def optimal_calpha_slope(alpha: float) -> float:
    """alpha / (alpha + 1): the PSNR slope of the optimal denoiser on C^alpha images (alpha > 0)."""
    if alpha <= 0:
        raise ValueError(f"C^alpha regularity must be positive, got alpha = {alpha}")
    return alpha / (alpha + 1.0)
