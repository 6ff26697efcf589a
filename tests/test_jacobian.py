"""Jacobian analysis: bias-free networks are homogeneous and equal to J(y) y; the vectorised
Jacobian equals the row-by-row definition; symmetry, spectrum and trace match known matrices."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from gahb_scale.analysis import (EmpiricalOptimalDenoiser, GaussianDenoiser, denoiser_jacobian,
                                 effective_dimensionality, eigen_spectrum, jacobian_by_rows, shrunk_gaussian_fit,
                                 symmetry_error, training_noise_prior)
from gahb_scale.models import BFBatchNorm, build_model, denoise

SIZE = 16
NETWORKS = {"unet": dict(width=8, blocks=2), "bfcnn": dict(width=8, layers=5)}


def _relative_error(estimate: torch.Tensor, target: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(estimate - target) / torch.linalg.vector_norm(target)).item()


@pytest.fixture(scope="module", params=sorted(NETWORKS))
def denoiser(request):
    """A network far from the identity in eval mode, as `f(y) = y - net(y)`.

    The authors' tiny initial gains make f nearly the identity, which would let a wrong Jacobian of
    the residual pass; gains of order one make the residual as large as the image.
    """
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():  # build_model initialises from the global RNG
        torch.manual_seed(0)
        net = build_model(request.param, **NETWORKS[request.param])
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, BFBatchNorm):
                module.gains.copy_(0.5 + torch.rand(module.gains.shape, generator=generator))
        net.train()  # a few passes put the running stds where real activations are
        for _ in range(5):
            net(torch.rand(8, 1, SIZE, SIZE, generator=generator))
    net.eval()
    return functools.partial(denoise, net)


@pytest.fixture(scope="module")
def noisy() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    clean = torch.rand(2, 1, SIZE, SIZE, generator=generator)
    return clean + 0.2 * torch.randn(clean.shape, generator=generator)


@pytest.fixture(scope="module")
def jacobian(denoiser, noisy) -> torch.Tensor:
    return denoiser_jacobian(denoiser, noisy)


def test_bias_free_denoiser_is_positively_homogeneous(denoiser, noisy):
    with torch.no_grad():
        out = denoiser(noisy)
        for a in (0.1, 0.5, 2.0, 7.3):
            assert _relative_error(denoiser(a * noisy), a * out) < 1e-4, a


def test_network_jacobian_is_far_from_identity(jacobian):
    # guards the tests below against passing on a denoiser that barely changes its input
    identity = torch.eye(jacobian.shape[-1])
    assert _relative_error(jacobian, identity.expand_as(jacobian)) > 0.1


def test_denoiser_equals_its_jacobian_times_input(denoiser, noisy, jacobian):
    with torch.no_grad():
        out = denoiser(noisy).flatten(1)
    linear = (jacobian @ noisy.flatten(1).unsqueeze(-1)).squeeze(-1)
    assert _relative_error(linear, out) < 1e-4


def test_vectorised_jacobian_matches_row_by_row_reference(denoiser, noisy, jacobian):
    assert jacobian.shape == (2, SIZE * SIZE, SIZE * SIZE)
    assert not jacobian.requires_grad  # no graph to the parameters is kept alive
    reference = jacobian_by_rows(denoiser, noisy)
    torch.testing.assert_close(jacobian, reference, rtol=1e-4, atol=1e-5 * reference.abs().max().item())


def test_chunked_jacobian_equals_unchunked(denoiser, noisy, jacobian):
    chunked = denoiser_jacobian(denoiser, noisy, chunk_size=7)  # 7 does not divide n: a ragged last chunk
    torch.testing.assert_close(chunked, jacobian, rtol=1e-5, atol=1e-6 * jacobian.abs().max().item())


def _linear_denoiser(matrix: torch.Tensor):
    return lambda y: (y.flatten(1) @ matrix.T).reshape(y.shape)


def test_jacobian_of_linear_denoiser_is_its_matrix():
    generator = torch.Generator().manual_seed(2)
    shape = (3, 4, 4)  # several channels: n counts every channel's pixels
    n = math.prod(shape)
    matrix = torch.randn(n, n, generator=generator)
    y = torch.randn(2, *shape, generator=generator)
    jacobian = denoiser_jacobian(_linear_denoiser(matrix), y, chunk_size=10)
    assert torch.equal(jacobian, matrix.expand(2, n, n))


def _symmetric_and_antisymmetric(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    a, b = torch.randn(2, n, n, dtype=torch.float64, generator=generator)
    return (a + a.T) / 2, (b - b.T) / 2


def test_symmetry_error_of_symmetric_matrix_is_zero():
    symmetric, _ = _symmetric_and_antisymmetric(20, seed=3)
    assert symmetry_error(symmetric.unsqueeze(0)).item() < 1e-12


def test_symmetry_error_of_asymmetric_matrix_matches_formula():
    # J = S + K with S symmetric, K antisymmetric: J - J^T = 2K and ||J||^2 = ||S||^2 + ||K||^2
    symmetric, antisymmetric = _symmetric_and_antisymmetric(20, seed=4)
    expected = 2 * antisymmetric.norm() / (symmetric.norm() ** 2 + antisymmetric.norm() ** 2).sqrt()
    errors = symmetry_error(torch.stack([symmetric + antisymmetric, symmetric]))
    torch.testing.assert_close(errors, torch.stack([expected, torch.tensor(0.0, dtype=torch.float64)]))


def _matrix_with_known_spectrum(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """J = Q diag(eigenvalues) Q^T + K: known spectrum of the symmetric part, plus an antisymmetric K."""
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=generator))
    eigenvalues = torch.linspace(1.2, -0.3, n, dtype=torch.float64)  # distinct, descending
    _, antisymmetric = _symmetric_and_antisymmetric(n, seed)
    return basis @ torch.diag(eigenvalues) @ basis.T + antisymmetric, eigenvalues, basis


def test_eigen_spectrum_recovers_known_eigenvalues_and_vectors():
    jacobian, eigenvalues, basis = _matrix_with_known_spectrum(12, seed=5)
    spectrum = eigen_spectrum(jacobian.unsqueeze(0))
    torch.testing.assert_close(spectrum.eigenvalues[0], eigenvalues)
    # eigenvectors are defined up to sign: |<e_k, q_j>| must be the identity
    overlaps = (basis.T @ spectrum.eigenvectors[0]).abs()
    torch.testing.assert_close(overlaps, torch.eye(12, dtype=torch.float64))


def test_effective_dimensionality_is_sum_of_eigenvalues():
    jacobian, eigenvalues, _ = _matrix_with_known_spectrum(12, seed=6)
    torch.testing.assert_close(effective_dimensionality(jacobian.unsqueeze(0)), eigenvalues.sum().reshape(1))


# --- the asymmetry references: the memorizer and the Gaussian MMSE denoiser ------------------------

def _training_set(count: int, size: int = 4) -> torch.Tensor:
    return torch.rand(count, 1, size, size, generator=torch.Generator().manual_seed(count), dtype=torch.float64)


def _noisy_held_out(sigma: float, size: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    clean = torch.rand(2, 1, size, size, generator=generator, dtype=torch.float64)
    return clean + sigma * torch.randn(clean.shape, generator=generator, dtype=torch.float64)


def test_closed_form_memorizer_jacobian_is_the_derivative_of_its_output():
    """Blind over the training noise prior, streaming the training set in chunks of 3 images."""
    grid, log_prior = training_noise_prior()
    memorizer = EmpiricalOptimalDenoiser(_training_set(10), sigma_grid=grid, log_prior=log_prior, chunk_size=3)
    for sigma in (0.1, 0.5):
        y = _noisy_held_out(sigma)
        reference = jacobian_by_rows(functools.partial(denoise, memorizer), y)
        assert _relative_error(memorizer.jacobian(y), reference) < 1e-9


def test_memorizer_of_one_image_has_zero_jacobian_and_at_known_sigma_a_symmetric_one():
    y = _noisy_held_out(0.05)
    assert torch.equal(EmpiricalOptimalDenoiser(_training_set(1)).jacobian(y), torch.zeros(2, 16, 16,
                                                                                          dtype=torch.float64))
    # at a known σ, J = posterior covariance / σ²: symmetric
    jacobian = EmpiricalOptimalDenoiser(_training_set(6), sigma=0.5).jacobian(_noisy_held_out(0.5))
    assert jacobian.abs().max() > 1e-3 and symmetry_error(jacobian).max() < 1e-12


def test_gaussian_reference_at_known_sigma_is_its_symmetric_wiener_filter():
    mean, cov = shrunk_gaussian_fit(_training_set(5))
    sigma, y = 0.3, _noisy_held_out(0.3)
    gaussian = GaussianDenoiser(mean, cov, sigma=sigma)
    jacobian = denoiser_jacobian(functools.partial(denoise, gaussian), y)
    wiener = cov @ torch.linalg.inv(cov + sigma ** 2 * torch.eye(16, dtype=torch.float64))
    assert _relative_error(jacobian, wiener.expand(2, 16, 16)) < 1e-10 and symmetry_error(jacobian).max() < 1e-10
    # blind over the training prior it is not linear, and the batched Jacobian still is its derivative
    grid, log_prior = training_noise_prior()
    blind = functools.partial(denoise, GaussianDenoiser(mean, cov, sigma_grid=grid, log_prior=log_prior))
    assert _relative_error(denoiser_jacobian(blind, y, chunk_size=5), jacobian_by_rows(blind, y)) < 1e-10
