"""Measurements on denoisers and their samples (Kadkhodaie et al., ICLR 2024): PSNR curves, split-pair similarity,
memorization, Jacobian analysis and the C^alpha PSNR slope. Plain PyTorch: no Ray, no MLflow.

A *denoiser* here is any callable `f(y) -> clean estimate` on (B, C, H, W) images in [0, 1]; for a
residual network pass `functools.partial(gahb_scale.models.denoise, net)` with `net` in eval mode.
"""

from .calpha_slope import fit_psnr_slope, optimal_calpha_slope
from .jacobian import (EigenSpectrum, denoiser_jacobian, effective_dimensionality, eigen_spectrum,
                       jacobian_by_rows, symmetry_error)
from .memorization import (MemorizationFraction, NearestNeighbours, distance_to_memorizer, memorization_fraction,
                           memorized_share, nearest_neighbours)
from .psnr import psnr, psnr_curve
from .reference import EmpiricalOptimalDenoiser, GaussianDenoiser, shrunk_gaussian_fit, training_noise_prior
from .similarity import cosine_similarity, independent_pair_similarity, split_pair_similarity, unit_vectors
from .subspaces import disc_tangent_space, energy_in_subspace, orthonormal_basis, principal_angles

__all__ = [
    "EigenSpectrum", "EmpiricalOptimalDenoiser", "GaussianDenoiser", "MemorizationFraction", "NearestNeighbours", "cosine_similarity",
    "denoiser_jacobian", "distance_to_memorizer", "effective_dimensionality", "eigen_spectrum", "fit_psnr_slope",
    "independent_pair_similarity", "jacobian_by_rows",
    "memorization_fraction", "memorized_share", "nearest_neighbours", "optimal_calpha_slope", "psnr", "psnr_curve",
    "split_pair_similarity", "symmetry_error", "unit_vectors", "disc_tangent_space", "energy_in_subspace",
    "orthonormal_basis", "principal_angles", "shrunk_gaussian_fit", "training_noise_prior",
]
