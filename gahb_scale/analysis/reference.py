"""Analytic reference denoisers: the exact MMSE denoisers of two priors we can write down.

- `GaussianDenoiser`: x ~ N(m, C). At a known σ, f(y) = m + C(C + σ²I)⁻¹(y − m).
- `EmpiricalOptimalDenoiser`: x uniform over a finite training set {x_i}. At a known σ,
  f(y) = Σ_i softmax_i(−‖y − x_i‖²/2σ²) x_i — the denoiser a network would learn if it memorised
  perfectly; sampling with it returns training images.

Like the networks, they are *blind* by default: σ is not given but integrated out under a
log-uniform prior on a grid, f(y) = Σ_k p(σ_k|y) f_σk(y), which is the MMSE denoiser for noise of
unknown level — what a blind network trained over all σ approximates. With `sigma` set they use
that σ. Both are nn.Modules returning the residual y − f(y), so they plug into the sampler and
the Jacobian code exactly where a network does.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def log_sigma_grid(low: float = 1e-3, high: float = 3.0, count: int = 96) -> torch.Tensor:
    return torch.logspace(math.log10(low), math.log10(high), count, dtype=torch.float64)


class GaussianDenoiser(nn.Module):
    """MMSE denoiser of a Gaussian prior N(mean, cov) on images of shape `image_shape`."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, sigma: float | None = None,
                 sigma_grid: torch.Tensor | None = None):
        super().__init__()
        eigenvalues, eigenvectors = torch.linalg.eigh(cov.double())
        self.register_buffer("mean", mean.double().reshape(-1))
        self.register_buffer("eigenvalues", eigenvalues.clamp_min(0))
        self.register_buffer("eigenvectors", eigenvectors)
        grid = torch.tensor([float(sigma)], dtype=torch.float64) if sigma is not None else (
            sigma_grid if sigma_grid is not None else log_sigma_grid())
        self.register_buffer("sigma_grid", grid.double())

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        coeffs = (y.double().flatten(1) - self.mean) @ self.eigenvectors  # (B, n) in the eigenbasis
        variances = self.eigenvalues + self.sigma_grid[:, None] ** 2  # (K, n): Var of y's coefficients at σ_k
        # log p(y | σ_k) up to a constant; the grid is log-uniform so this is also the log posterior.
        log_lik = -0.5 * (torch.log(variances).sum(1) + coeffs**2 @ (1 / variances).T)  # (B, K)
        posterior = torch.softmax(log_lik, dim=1)
        shrinkage = posterior @ (self.eigenvalues / variances)  # (B, n): E[λ/(λ+σ²) | y]
        denoised = self.mean + (shrinkage * coeffs) @ self.eigenvectors.T
        return (y.double().flatten(1) - denoised).reshape(y.shape).to(y.dtype)


class EmpiricalOptimalDenoiser(nn.Module):
    """MMSE denoiser of the empirical distribution of `train_images` (N, C, H, W).

    The training set is visited `chunk_size` images at a time with a running log-sum-exp, so the
    posterior over 10^5 training images never exists at once; the images are kept in their own
    dtype and each chunk is promoted to float64 for the distances.
    """

    def __init__(self, train_images: torch.Tensor, sigma: float | None = None, sigma_grid: torch.Tensor | None = None,
                 chunk_size: int = 2048):
        super().__init__()
        self.register_buffer("train_images", train_images.flatten(1))
        grid = torch.tensor([float(sigma)], dtype=torch.float64) if sigma is not None else (
            sigma_grid if sigma_grid is not None else log_sigma_grid())
        self.register_buffer("sigma_grid", grid.double())
        self.chunk_size = chunk_size

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        flat = y.double().flatten(1)
        n, var = flat.shape[1], self.sigma_grid ** 2  # var: (K,)
        # Per (image b, noise level k), over training images i with logits -‖y − x_i‖²/2σ_k²: the
        # running max m, the sum of exp(logit − m) and the same sum weighted by x_i.
        m = torch.full((len(flat), len(var)), -math.inf, dtype=torch.float64, device=flat.device)
        total = torch.zeros_like(m)
        weighted = torch.zeros((*m.shape, n), dtype=torch.float64, device=flat.device)
        for chunk in self.train_images.split(self.chunk_size):
            chunk = chunk.double()
            logits = -torch.cdist(flat, chunk).square()[:, None, :] / (2 * var[None, :, None])  # (B, K, M)
            new_m = torch.maximum(m, logits.amax(dim=2))
            rescale = torch.exp(m - new_m)
            w = torch.exp(logits - new_m[..., None])
            total = total * rescale + w.sum(dim=2)
            weighted = weighted * rescale[..., None] + w @ chunk
            m = new_m
        posterior_mean = weighted / total[..., None]  # (B, K, n): E[x | y, σ_k]
        # p(y | σ_k) = mean_i N(y; x_i, σ_k² I): the evidence for each σ (log-uniform grid prior).
        log_evidence = m + torch.log(total) - n * torch.log(self.sigma_grid)  # (B, K), up to a constant
        denoised = (torch.softmax(log_evidence, dim=1)[..., None] * posterior_mean).sum(dim=1)
        return (flat - denoised).reshape(y.shape).to(y.dtype)
