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
from typing import Callable

import torch
from torch import nn

from .jacobian import denoiser_jacobian


def log_sigma_grid(low: float = 1e-3, high: float = 3.0, count: int = 96) -> torch.Tensor:
    return torch.logspace(math.log10(low), math.log10(high), count, dtype=torch.float64)


class GaussianDenoiser(nn.Module):
    """MMSE denoiser of a Gaussian prior N(mean, cov) on images of shape `image_shape`.

    Blind unless `sigma` is given: the noise level is integrated out under a prior on `sigma_grid`
    (`log_prior`, default uniform on the grid), as for `EmpiricalOptimalDenoiser`.
    """

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, sigma: float | None = None,
                 sigma_grid: torch.Tensor | None = None, log_prior: torch.Tensor | None = None):
        super().__init__()
        eigenvalues, eigenvectors = torch.linalg.eigh(cov.double())
        self.register_buffer("mean", mean.double().reshape(-1))
        self.register_buffer("eigenvalues", eigenvalues.clamp_min(0))
        self.register_buffer("eigenvectors", eigenvectors)
        grid = torch.tensor([float(sigma)], dtype=torch.float64) if sigma is not None else (
            sigma_grid if sigma_grid is not None else log_sigma_grid())
        self.register_buffer("sigma_grid", grid.double())
        self.register_buffer("log_prior", torch.zeros_like(self.sigma_grid) if log_prior is None or sigma is not None
                             else log_prior.double())

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        coeffs = (y.double().flatten(1) - self.mean) @ self.eigenvectors  # (B, n) in the eigenbasis
        variances = self.eigenvalues + self.sigma_grid[:, None] ** 2  # (K, n): Var of y's coefficients at σ_k
        # log p(y | σ_k) up to a constant, plus the prior mass of σ_k: the log posterior of σ_k
        log_lik = -0.5 * (torch.log(variances).sum(1) + coeffs**2 @ (1 / variances).T)  # (B, K)
        posterior = torch.softmax(log_lik + self.log_prior, dim=1)
        shrinkage = posterior @ (self.eigenvalues / variances)  # (B, n): E[λ/(λ+σ²) | y]
        denoised = self.mean + (shrinkage * coeffs) @ self.eigenvectors.T
        return (y.double().flatten(1) - denoised).reshape(y.shape).to(y.dtype)


def shrunk_gaussian_fit(train_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (n,) and shrunk covariance (n, n) of `train_images` (N, C, H, W), in float64.

    Below N = n the sample covariance S has rank N − 1: a Gaussian denoiser built on it projects
    onto the affine span of the training images, which memorizes in its own way instead of being
    the second-order (generalizing) reference it is meant to be. The oracle approximating shrinkage
    of Chen, Wiesel, Eldar & Hero (2010) moves S toward (tr S / n) I by the weight that minimizes
    the expected Frobenius error to the true covariance of Gaussian data — the model this reference
    assumes — estimated from the images themselves: about 2/3 for two images, → 0 as N grows, so
    no ridge size is chosen by hand, the total variance tr S is kept, and at large N it is the plain
    fit. (Ledoit–Wolf's weight is 0 at N = 2, where two images are symmetric about their mean, and
    would leave S singular.) A single image has S = 0 and stays so: its Gaussian is a point, J = 0.
    """
    x = train_images.flatten(1).double()
    count, n = x.shape
    mean = x.mean(0)
    centred = x - mean
    sample = centred.T @ centred / count
    trace, frobenius = sample.trace(), sample.square().sum()
    denominator = (count + 1) * (frobenius - trace ** 2 / n)
    shrinkage = 1.0 if denominator <= 0 else min(float((frobenius + trace ** 2) / denominator), 1.0)
    return mean, shrinkage * trace / n * torch.eye(n, dtype=x.dtype, device=x.device) + (1 - shrinkage) * sample


def training_noise_prior(noise_range: tuple[float, float] = (0.0, 255.0), schedule: str = "quadratic",
                         count: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """The σ distribution of blind training (`gahb_scale.training.draw_noise_levels`) on a log grid.

    Returns (grid, log_prior): `count` levels log-spaced over the range (in [0, 1] image units; a
    lower end of 0 starts at 0.1/255) and the log prior mass of each. The quadratic schedule has
    density ∝ σ^(-1/2), the linear one a flat density; on a log grid a level's mass is its density
    times σ.
    """
    low, high = max(noise_range[0], 0.1) / 255.0, noise_range[1] / 255.0
    grid = torch.logspace(math.log10(low), math.log10(high), count, dtype=torch.float64)
    log_density = -0.5 * torch.log(grid) if schedule == "quadratic" else torch.zeros_like(grid)
    return grid, log_density + torch.log(grid)


class EmpiricalOptimalDenoiser(nn.Module):
    """MMSE denoiser of the empirical distribution of `train_images` (N, C, H, W).

    Blind unless `sigma` is given: the noise level is integrated out under a prior on
    `sigma_grid` (`log_prior`, default uniform on the grid). With `rescaled`, the distribution is
    the training images at every scale a (a flat prior on a): the memorizer a bias-free network can
    be, since f(a·y) = a·f(y) forbids it to return x_i itself whatever the input's scale. Given
    image i and σ, a is Gaussian around ⟨y, x_i⟩/‖x_i‖² (integrated over all real a; for images of
    positive mean the a < 0 tail is negligible), so the posterior mean is a sum of
    projections of y onto the rays through the training images, weighted by
    exp(−dist(y, ray_i)²/2σ²) / (‖x_i‖ σ^(n−1)).

    The training set is visited `chunk_size` images at a time, three times: once for the nearest
    image, which bounds the σ levels that can matter (`_levels`), once for the evidence of each,
    once for the posterior mean, so neither a (batch × N) posterior nor a float64 copy of 10^5
    training images ever exists; the images stay in their own dtype and each chunk is promoted to
    float64.
    """

    def __init__(self, train_images: torch.Tensor, sigma: float | None = None, sigma_grid: torch.Tensor | None = None,
                 log_prior: torch.Tensor | None = None, rescaled: bool = False, chunk_size: int = 4096):
        super().__init__()
        self.register_buffer("train_images", train_images.flatten(1))
        grid = torch.tensor([float(sigma)], dtype=torch.float64) if sigma is not None else (
            sigma_grid if sigma_grid is not None else log_sigma_grid())
        self.register_buffer("sigma_grid", grid.double())
        self.register_buffer("log_prior", torch.zeros_like(self.sigma_grid) if log_prior is None or sigma is not None
                             else log_prior.double())
        self.rescaled, self.chunk_size = rescaled, chunk_size
        # Each image's log weight (−log ‖x_i‖ when rescaled, see `_distances`), (N,) float64: a
        # property of the training set, which `_levels` reads on every call.
        images = self.train_images
        weights = (-torch.log(torch.cat([self._norms(chunk.double()) for chunk in images.split(chunk_size)]))
                   if rescaled else torch.zeros(len(images), dtype=torch.float64, device=images.device))
        self.register_buffer("image_log_weights", weights, persistent=False)

    def _distances(self, flat: torch.Tensor, chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(squared distance of each row of `flat` to each image of `chunk`, or to its ray when
        rescaled, (B, M); each image's log weight, (M,); the scale of x_i in the posterior mean given
        i, (B, M): 1, or ⟨y, x_i⟩/‖x_i‖² when rescaled)."""
        if self.rescaled:
            norms = self._norms(chunk)
            inner = flat @ chunk.T
            sq_dist = (flat.square().sum(1, keepdim=True) - (inner / norms).square()).clamp_min(0.0)  # to ray i
            return sq_dist, -torch.log(norms), inner / norms.square()
        return torch.cdist(flat, chunk).square(), torch.zeros_like(chunk[:, 0]), torch.ones(())

    @staticmethod
    def _norms(chunk: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(chunk, dim=1).clamp_min(1e-12)

    def _dims(self, flat: torch.Tensor) -> int:
        return flat.shape[1] - 1 if self.rescaled else flat.shape[1]  # the ray's direction is integrated out

    def _terms(self, flat: torch.Tensor, chunk: torch.Tensor,
               sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-likelihood of (i, σ_k) for the levels `sigmas`, up to a constant shared by all i and
        k, (B, K, M); the scale of x_i, see `_distances`)."""
        sq_dist, log_weight, scale = self._distances(flat, chunk)
        log_lik = (-sq_dist[:, None, :] / (2 * sigmas[None, :, None] ** 2)
                   - self._dims(flat) * torch.log(sigmas)[None, :, None] + log_weight[None, None, :])
        return log_lik, scale

    def _levels(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The σ levels of the grid that can matter for some row of `flat`, and their log prior.

        The n noise coordinates pin σ down: for a given y the posterior p(σ_k | y) is negligible on
        all but a few levels of a fine grid, and each pass over the training images costs the
        number of levels times N. A level is skipped when its posterior is below e^-60 of the
        largest for every row, bounded from the nearest image alone: with D its squared distance
        (to its ray, when rescaled) and w_i the images' log weights, log Σ_i exp(w_i − d_i/2σ²) lies
        between w_nearest − D/2σ² and max_i w_i + log N − D/2σ². What is skipped is below the
        float64 rounding of the posterior mean (the closed-form Jacobian keeps every level)."""
        nearest, index = self._nearest(flat)
        nearest_weight, top_weight = self.image_log_weights[index], float(self.image_log_weights.max())
        shared = (-nearest[:, None] / (2 * self.sigma_grid[None] ** 2) - self._dims(flat) * torch.log(self.sigma_grid)
                  + self.log_prior)  # (B, K)
        lower = shared + nearest_weight[:, None]
        upper = shared + top_weight + math.log(len(self.train_images))
        keep = (upper >= lower.max(1, keepdim=True).values - 60.0).any(0)
        return self.sigma_grid[keep], self.log_prior[keep]

    def _evidence(self, flat: torch.Tensor, levels: tuple[torch.Tensor, torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pass 1: the σ levels and their log prior (by default those that matter, `_levels`), the
        log evidence of each per image, a running log-sum-exp over chunks, (B, K); and p(σ_k | y),
        (B, K)."""
        sigmas, log_prior = self._levels(flat) if levels is None else levels
        log_sum = torch.full((len(flat), len(sigmas)), -math.inf, dtype=torch.float64, device=flat.device)
        for chunk in self.train_images.split(self.chunk_size):
            log_sum = torch.logaddexp(log_sum, torch.logsumexp(self._terms(flat, chunk.double(), sigmas)[0], dim=2))
        return sigmas, log_sum, torch.softmax(log_sum + log_prior, dim=1)

    def _chunk_weights(self, flat: torch.Tensor, chunk: torch.Tensor,
                       evidence: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                       per_variance: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Each training image's posterior weight Σ_k p(σ_k, i | y) (B, M) — with `per_variance`,
        Σ_k p(σ_k, i | y) / σ_k² — and its scale (see `_distances`)."""
        sigmas, log_sum, sigma_posterior = evidence
        log_lik, scale = self._terms(flat, chunk, sigmas)
        joint = sigma_posterior[..., None] * torch.exp(log_lik - log_sum[..., None])  # (B, K, M)
        if per_variance:
            joint = joint / sigmas[None, :, None] ** 2
        return joint.sum(1), scale

    def _denoised(self, flat: torch.Tensor, evidence: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Pass 2: E[x | y] = Σ_k p(σ_k | y) Σ_i p(i | y, σ_k) E[x | y, σ_k, i], with the σ mixture
        folded into one weight per training image before the product with the images."""
        denoised = torch.zeros_like(flat)
        for chunk in self.train_images.split(self.chunk_size):
            chunk = chunk.double()
            weights, scale = self._chunk_weights(flat, chunk, evidence)
            denoised += (weights * scale) @ chunk
        return denoised

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        flat = y.double().flatten(1)
        return (flat - self._denoised(flat, self._evidence(flat))).reshape(y.shape).to(y.dtype)

    @torch.no_grad()
    def jacobian(self, y: torch.Tensor) -> torch.Tensor:
        """The Jacobian of the denoiser f(y) = E[x | y] (not of the residual) at each image of `y`,
        (B, n, n) float64, rows = output pixels as in `denoiser_jacobian`, in closed form.

        The joint posterior of (σ_k, i) is a softmax of ℓ_ki = −‖y − x_i‖²/2σ_k² + const_k, and
        ∇ℓ_ki = (x_i − y)/σ_k², so J = Σ_i b_i (x_i − f(y))(x_i − y)ᵀ with b_i = Σ_k p(σ_k, i | y)/σ_k²
        (at a known σ: the posterior covariance / σ², symmetric). Two more passes over the training
        images, against n pullbacks through the whole forward pass for automatic differentiation:
        at 16×16 and N = 1000, milliseconds instead of seconds per image.
        x_i − f(y) is taken as (x_i − a) − (f(y) − a), a the nearest training image (the one of
        largest weight: at every σ the weight falls with the distance), f(y) − a = Σ_i w_i (x_i − a):
        where the posterior is sure of a, J is tiny and x_i − f(y) would be rounding noise that
        makes J look asymmetric; this way a single training image gives J = 0 exactly.
        """
        if self.rescaled:
            raise ValueError("the closed-form Jacobian is that of the plain memorizer (rescaled=False)")
        flat = y.double().flatten(1)
        # Every σ level, none skipped: where the posterior is sure, J is made of the other images'
        # tiny weights, times 1/σ², which those of a level `_levels` would skip can rival.
        evidence = self._evidence(flat, (self.sigma_grid, self.log_prior))
        anchor = self.train_images[self._nearest(flat)[1]].double()
        offset = torch.zeros_like(flat)  # f(y) − a
        for chunk in self.train_images.split(self.chunk_size):
            chunk = chunk.double()
            weights, _ = self._chunk_weights(flat, chunk, evidence)
            offset += (weights[:, :, None] * (chunk[None] - anchor[:, None])).sum(1)
        jacobian = torch.zeros(len(flat), flat.shape[1], flat.shape[1], dtype=torch.float64, device=flat.device)
        for chunk in self.train_images.split(self.chunk_size):
            chunk = chunk.double()
            b, _ = self._chunk_weights(flat, chunk, evidence, per_variance=True)
            from_output = (chunk[None] - anchor[:, None]) - offset[:, None]  # x_i − f(y), (B, M, n)
            jacobian += from_output.mT @ (b[..., None] * (chunk[None] - flat[:, None]))
        return jacobian

    def _nearest(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's nearest training image: its squared L2 distance (to its ray, when rescaled)
        and its index, (B,) each."""
        nearest = torch.full((len(flat),), math.inf, dtype=torch.float64, device=flat.device)
        index = torch.zeros(len(flat), dtype=torch.long, device=flat.device)
        start = 0
        for chunk in self.train_images.split(self.chunk_size):
            distance, within = self._distances(flat, chunk.double())[0].min(1)
            closer = distance < nearest
            nearest, index = torch.where(closer, distance, nearest), torch.where(closer, within + start, index)
            start += len(chunk)
        return nearest, index


def blind_reference_jacobians(train_images: torch.Tensor, noise_range: tuple[float, float] = (0.0, 255.0),
                              noise_schedule: str = "quadratic",
                              chunk_size: int | None = None) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Noisy images (B, C, H, W) → Jacobians (B, n, n) of the two analytic ends of the transition,
    blind over the training noise prior: the exact empirical-optimal denoiser of the training set
    (the memorizer, as `distance_to_memorizer` builds it; its Jacobian in closed form) and the MMSE
    denoiser of the Gaussian fitted to the training images (`shrunk_gaussian_fit`), in float64:
    their Jacobians are small where they are sure, and float32 rounding of y − residual would
    swamp them."""
    grid, log_prior = training_noise_prior(noise_range, noise_schedule)
    memorizer = EmpiricalOptimalDenoiser(train_images, sigma_grid=grid, log_prior=log_prior).to(train_images.device)
    gaussian = GaussianDenoiser(*shrunk_gaussian_fit(train_images), sigma_grid=grid,
                                log_prior=log_prior).to(train_images.device)
    return {"memorizer": memorizer.jacobian,
            "gaussian": lambda y: denoiser_jacobian(lambda x: x - gaussian(x), y.double(), chunk_size)}
