"""When memorization sets in, and where the regime switches: τ_mem, the law τ_mem ∝ N^b (Bonnaire
et al. 2025 find b = 1) and the N of the transition, from f_mem measured over training steps and
over training-set sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


def level_crossing(steps: list[int], f_mem: list[float], level: float) -> tuple[int | None, int | None, float]:
    """Where a curve of f_mem over training steps first reaches `level`: (first step at or above it,
    the snapshot step just before it, the crossing interpolated linearly in log step between those
    two). Steps whose f_mem is undefined (NaN) are skipped. The crossing is NaN when the curve
    never reaches the level (first step None) or already has at its first defined step (the
    step before it None: the crossing lies somewhere before, and only an upper bound is known)."""
    defined = [(step, value) for step, value in zip(steps, f_mem) if not math.isnan(value)]
    for i, (step, value) in enumerate(defined):
        if value >= level:
            if i == 0:
                return step, None, math.nan
            below, below_value = defined[i - 1]
            share = (level - below_value) / (value - below_value)
            return step, below, math.exp(math.log(below) + share * (math.log(step) - math.log(below)))
    return None, None, math.nan


@dataclass
class MemorizationLaw:
    """log τ_mem = intercept + exponent·log N (natural logs), with a 95% percentile-bootstrap
    interval [ci_low, ci_high] for the exponent; `resampled_over` says what the bootstrap drew
    ("seeds", "models within each N", or None: no interval), `resamples` how many draws fitted a line."""
    exponent: float
    intercept: float
    ci_low: float
    ci_high: float
    n_values: int
    units: int
    seeds: int
    resampled_over: str | None
    resamples: int


def _log_fit(log_n: np.ndarray, log_tau: np.ndarray) -> tuple[float, float]:
    """(b, a) of the least-squares line log τ = a + b·log N; NaN without two distinct N."""
    if len(np.unique(log_n)) < 2:
        return math.nan, math.nan
    b, a = np.polyfit(log_n, log_tau, 1)
    return float(b), float(a)


def fit_memorization_law(n: Sequence[int], tau: Sequence[float], seed: Sequence[int], n_boot: int = 1000,
                         rng_seed: int = 0) -> MemorizationLaw:
    """Fit log τ_mem = a + b·log N over the models with a τ (NaN τ: none, left out), one entry of
    `n`, `tau` and `seed` per model.

    The bootstrap resamples seeds with replacement, each drawn seed bringing all its models: a
    seed's models at different N start from the same weights and noise streams, so they are not
    independent of each other. With one seed there is nothing to resample over, and the models are
    resampled instead, within each N so every resample keeps the N values; with one model at each
    N there is nothing to resample, and no interval. A fit needs τ at two N values at least."""
    timed = ~np.isnan(np.array(tau, dtype=float))
    log_n = np.log(np.array(n, dtype=float)[timed])
    log_tau = np.log(np.array(tau, dtype=float)[timed])
    b, a = _log_fit(log_n, log_tau)
    seed_of = np.array(seed)[timed]
    seeds = np.unique(seed_of)
    by_seed = [np.flatnonzero(seed_of == value) for value in seeds]
    by_n = [np.flatnonzero(log_n == value) for value in np.unique(log_n)]
    if math.isnan(b):
        resampled_over = None
    elif len(seeds) > 1:
        resampled_over = "seeds"
    elif any(len(members) > 1 for members in by_n):
        resampled_over = "models within each N"
    else:  # one model at each N: every resample is the study itself, an interval of width 0
        resampled_over = None
    rng = np.random.default_rng(rng_seed)
    draws = []
    for _ in range(0 if resampled_over is None else n_boot):
        if resampled_over == "seeds":
            picked = np.concatenate([by_seed[i] for i in rng.integers(len(seeds), size=len(seeds))])
        else:
            picked = np.concatenate([rng.choice(members, size=len(members)) for members in by_n])
        draws.append(_log_fit(log_n[picked], log_tau[picked])[0])
    draws = np.array(draws)
    draws = draws[~np.isnan(draws)]  # a draw of seeds whose models all share one N fits no line
    low, high = np.percentile(draws, [2.5, 97.5]) if draws.size else (math.nan, math.nan)
    return MemorizationLaw(exponent=b, intercept=a, ci_low=float(low), ci_high=float(high), n_values=len(by_n),
                           units=int(timed.sum()), seeds=len(seeds), resampled_over=resampled_over,
                           resamples=int(draws.size))


def switch_n(f_mem_by_n: Sequence[tuple[int, float]], level: float) -> float | None:
    """The N where the regime switches from memorization to generalization, from (N, f_mem) points:
    the geometric mean of the largest N whose f_mem reaches `level` and the next N above it (whose
    f_mem is below, being above the largest). None when the points do not bracket it: no N
    memorizes, or the largest N still does. Points whose f_mem is undefined (NaN) are skipped."""
    points = sorted((n, f_mem) for n, f_mem in f_mem_by_n if not math.isnan(f_mem))
    memorizing = [i for i, (_, f_mem) in enumerate(points) if f_mem >= level]
    last = memorizing[-1] if memorizing else None
    return None if last is None or last + 1 == len(points) else math.sqrt(points[last][0] * points[last + 1][0])
