"""The Kadkhodaie–Simoncelli (NeurIPS 2021) sampler: stochastic coarse-to-fine gradient ascent.

A blind denoiser's residual d(y) = y − f(y) is σ²∇log p_σ(y), so stepping y ← y − h·d climbs the
log-density of the noisy image while the effective noise σ_t = ‖d‖/√n shrinks. β = 1 makes the
trajectory deterministic given the initial noise; β < 1 injects fresh noise at each step.

Reproducibility across models is the point of the split-pair comparison: sample i draws its
initial and injected noise from its own generator seeded with `seeds[i]`, one draw per step it is
still running, so models A and B fed the same seeds see identical noise streams regardless of
batch composition or of which other samples have stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

DIVERGED_ABOVE = 2.0  # a trajectory whose σ_t exceeds this many times σ_0 is not converging

Residual = Callable[[torch.Tensor], torch.Tensor]  # y -> y − f(y): a network of models.py or a reference denoiser


@dataclass
class SamplerResult:
    samples: torch.Tensor  # (B, C, H, W): f(y) after the last step of each sample
    sigmas: torch.Tensor  # (B, T): σ_t per step, NaN after the sample stopped
    steps: torch.Tensor  # (B,): steps taken
    hit_cap: torch.Tensor  # (B,) bool: stopped by max_steps, not by reaching sigma_L
    diverged: torch.Tensor  # (B,) bool: stopped because σ_t blew up (the sample is NaN: there is none)

    @property
    def num_capped(self) -> int:
        return int(self.hit_cap.sum())

    @property
    def num_diverged(self) -> int:
        return int(self.diverged.sum())


def step_size(t: int, h0: float) -> float:
    """h_t = h0·t / (1 + h0·(t − 1)): small steps while the image is mostly noise, up to 1 at the end."""
    return h0 * t / (1 + h0 * (t - 1))


@torch.no_grad()
def sample_kadkhodaie_simoncelli(residual: Residual, image_shape: Sequence[int], seeds: Sequence[int], h0: float = 0.01,
                                 beta: float = 1.0, sigma_0: float = 1.0, sigma_L: float = 0.01, mean: float = 0.5,
                                 max_steps: int = 5_000, device: str | torch.device | None = None) -> SamplerResult:
    """Draw len(seeds) samples from the prior embedded in a blind denoiser, all in one batch.

    `image_shape` is (C, H, W). Every sample runs until its own σ_t ≤ sigma_L, takes that step
    too, and returns f(y) = y − net(y) at the point it reached (the authors' last step); finished
    samples leave the batch so the network only sees the ones still running. A sample still running after
    `max_steps` is stopped and flagged in `hit_cap`; one whose σ_t overflows (a denoiser too
    inaccurate at low noise makes the ascent unstable) or grows past twice σ_0 (the authors'
    "not converging" test) is stopped, flagged in `diverged` and returned as NaN.
    Callers must report both.
    """
    if not 0 < beta <= 1:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    if not 0 < h0 <= 1:
        raise ValueError(f"h0 must be in (0, 1], got {h0}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batch, n = len(seeds), math.prod(image_shape)
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def draw(rows: torch.Tensor) -> torch.Tensor:
        # Drawn on the CPU per sample: the stream of sample i must not depend on the others.
        noise = torch.stack([torch.randn(tuple(image_shape), generator=generators[i]) for i in rows.tolist()])
        return noise.to(device)

    all_rows = torch.arange(batch)
    y = mean + sigma_0 * draw(all_rows)
    samples = torch.empty_like(y)
    steps = torch.zeros(batch, dtype=torch.long)
    hit_cap = torch.zeros(batch, dtype=torch.bool)
    diverged = torch.zeros(batch, dtype=torch.bool)
    history: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows still running, their σ_t) per step

    def ascend(y: torch.Tensor, d: torch.Tensor, sigma: torch.Tensor, rows: torch.Tensor, t: int) -> torch.Tensor:
        h = step_size(t, h0)
        y = y - h * d
        if beta < 1:
            gamma = sigma * math.sqrt((1 - beta * h) ** 2 - (1 - h) ** 2)
            y = y + gamma.view(-1, *([1] * len(image_shape))) * draw(rows)
        return y

    active = all_rows  # indices into the batch of the samples still running; y holds only those
    t = 1
    while active.numel():
        d = residual(y)
        sigma = (d.flatten(1).norm(dim=1) / math.sqrt(n)).float()
        history.append((active, sigma.cpu()))
        # the authors' "not converging" test (σ_t > 2 for σ_0 = 1), and any overflow
        converged, blown_up = (sigma <= sigma_L).cpu(), ~(sigma <= DIVERGED_ABOVE * sigma_0).cpu()
        converged &= ~blown_up
        done = converged | blown_up | (t >= max_steps)
        if done.any():
            finished = active[done]
            # As the authors' loop does, a finished sample takes the step of its last σ_t too, and
            # is returned denoised from there; a diverged one has no sample: NaN.
            last = done & ~blown_up
            if last.any():
                k = last.to(device)
                y_last = ascend(y[k], d[k], sigma[k], active[last], t)
                samples[active[last].to(device)] = y_last - residual(y_last)
            if blown_up.any():
                samples[active[blown_up].to(device)] = float("nan")
            steps[finished] = t
            hit_cap[finished] = ~converged[done] & ~blown_up[done]
            diverged[finished] = blown_up[done]
            keep = ~done
            active, y, d, sigma = active[keep], y[keep.to(device)], d[keep.to(device)], sigma[keep.to(device)]
            if not active.numel():
                break
        y = ascend(y, d, sigma, active, t)
        t += 1

    sigmas = torch.full((batch, len(history)), float("nan"))
    for step_index, (rows, values) in enumerate(history):
        sigmas[rows, step_index] = values
    return SamplerResult(samples=samples, sigmas=sigmas, steps=steps, hit_cap=hit_cap, diverged=diverged)
