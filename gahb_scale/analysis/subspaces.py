"""Subspaces of image space: the tangent space of the disc family, principal angles, and how much of
a denoiser's Jacobian lives inside a given subspace.

On a low-dimensional image family the optimal denoiser at small noise projects onto the family's
tangent space (5-D for discs). Comparing the trained network's Jacobian with that tangent space shows
what it keeps beyond it (its GAHB components); principal angles between the leading eigen-subspaces
of the two models of a split pair show generalization in the learned basis itself.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from ..data.discs import DISC_ANTIALIASING, render_discs


def orthonormal_basis(vectors: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (..., n, k) of the span of the columns of `vectors` (..., n, k)."""
    q, _ = torch.linalg.qr(vectors)
    return q


def disc_tangent_space(params: torch.Tensor, size: int, antialiasing: int = DISC_ANTIALIASING,
                       step: float = 1e-3) -> torch.Tensor:
    """Orthonormal basis (B, n, 5) of the tangent space of the disc family at each row of `params` (B, 5).

    Central finite differences of `render_discs` in each parameter, in float64 so the small step
    does not drown in rounding; positions and radius move by `step` pixels, greys by `step`.
    """
    params = params.double()
    columns = []
    for k in range(params.shape[1]):
        shift = torch.zeros_like(params)
        shift[:, k] = step
        plus = render_discs(params + shift, size, antialiasing).flatten(1)
        minus = render_discs(params - shift, size, antialiasing).flatten(1)
        columns.append((plus - minus) / (2 * step))
    return orthonormal_basis(torch.stack(columns, dim=2))


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending, float64) between the column spans of `a` (..., n, p) and `b` (..., n, q).

    `scipy.linalg.subspace_angles` per matrix pair: it switches to sines for small angles, where
    the arccos of singular values (Björck & Golub 1973) loses all precision.
    """
    batch = a.shape[:-2]
    a_rows = a.detach().double().cpu().reshape(-1, *a.shape[-2:]).numpy()
    b_rows = b.detach().double().cpu().reshape(-1, *b.shape[-2:]).numpy()
    angles = np.stack([scipy.linalg.subspace_angles(x, y)[::-1] for x, y in zip(a_rows, b_rows)])
    return torch.from_numpy(angles.copy()).reshape(*batch, angles.shape[-1])


def energy_in_subspace(jacobian: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Share of the Jacobian's Frobenius energy inside a subspace: ‖P J P‖²_F / ‖J‖²_F, (B,).

    `basis` (B, n, k) must be orthonormal (e.g. from `disc_tangent_space`); P = basis basisᵀ.
    1 means the denoiser acts only within the subspace; a projection onto it gives exactly 1.
    """
    inside = basis.transpose(-1, -2) @ jacobian @ basis  # k × k block: ‖P J P‖_F = ‖Bᵀ J B‖_F
    return inside.square().sum(dim=(-1, -2)) / jacobian.square().sum(dim=(-1, -2))


def tangent_space_measures(jacobian: torch.Tensor, eigenvectors: torch.Tensor, eigenvalues: torch.Tensor,
                           tangent: torch.Tensor, threshold: float) -> dict[str, torch.Tensor]:
    """How Jacobians (B, n, n) at noisy images of a family relate to its tangent spaces there
    (`tangent` (B, n, d), orthonormal; `eigenvectors` and `eigenvalues` from `eigen_spectrum`), each (B,).

    The optimal denoiser at small noise is the projection onto the tangent space: energy inside 1,
    trace inside d = total trace, d eigenvalues near 1 whose eigenvectors span the tangent space.
    What a network keeps beyond that is what the paper calls its GAHB components. `leading_alignment`:
    mean cos² of the principal angles between the d leading eigenvectors and the tangent space;
    `eigenvalues_above`: how many eigenvalues exceed `threshold`.
    """
    dims = tangent.shape[-1]
    leading = eigenvectors[:, :, :dims]
    return {"energy_inside": energy_in_subspace(jacobian, tangent),
            "trace_inside": (tangent.transpose(-1, -2) @ jacobian @ tangent).diagonal(dim1=-2, dim2=-1).sum(-1),
            "trace_total": jacobian.diagonal(dim1=-2, dim2=-1).sum(-1),
            "leading_alignment": torch.cos(principal_angles(leading.double(), tangent.double())).square().mean(-1),
            "eigenvalues_above": (eigenvalues > threshold).sum(-1)}
