"""Measurements on denoisers and their samples (Kadkhodaie et al., ICLR 2024): PSNR curves, split-pair similarity,
memorization and the memorization-time law, Jacobian analysis (against the analytic reference denoisers and
a family's tangent space) and the C^alpha PSNR slope. Plain PyTorch: no Ray, no MLflow.

A *denoiser* here is any callable `f(y) -> clean estimate` on (B, C, H, W) images in [0, 1]; for a
residual network pass `functools.partial(gahb_scale.models.denoise, net)` with `net` in eval mode.
"""

from .calpha_slope import fit_psnr_slope, optimal_calpha_slope
from .jacobian import (EigenSpectrum, denoiser_jacobian, effective_dimensionality, eigen_spectrum,
                       jacobian_by_rows, symmetry_error)
from .memorization import (MemorizationFraction, NearestNeighbours, TrainingSetMatches, distance_to_memorizer,
                           match_training_set, memorization_fraction, memorized_share, nearest_neighbours)
from .memorization_law import MemorizationLaw, fit_memorization_law, level_crossing, switch_n
from .psnr import psnr, psnr_curve
from .reference import (EmpiricalOptimalDenoiser, GaussianDenoiser, blind_reference_jacobians, shrunk_gaussian_fit,
                        training_noise_prior)
from .similarity import cosine_similarity, independent_pair_similarity, split_pair_similarity, unit_vectors
from .subspaces import (disc_tangent_space, energy_in_subspace, orthonormal_basis, principal_angles,
                        tangent_space_measures)

__all__ = [
    "EigenSpectrum", "EmpiricalOptimalDenoiser", "GaussianDenoiser", "MemorizationFraction", "MemorizationLaw",
    "NearestNeighbours", "TrainingSetMatches", "blind_reference_jacobians", "cosine_similarity",
    "denoiser_jacobian", "disc_tangent_space", "distance_to_memorizer", "effective_dimensionality",
    "eigen_spectrum", "energy_in_subspace", "fit_memorization_law", "fit_psnr_slope",
    "independent_pair_similarity", "jacobian_by_rows", "level_crossing", "match_training_set",
    "memorization_fraction", "memorized_share", "nearest_neighbours", "optimal_calpha_slope", "orthonormal_basis",
    "principal_angles", "psnr", "psnr_curve", "shrunk_gaussian_fit", "split_pair_similarity", "switch_n",
    "symmetry_error", "tangent_space_measures", "training_noise_prior", "unit_vectors",
]
