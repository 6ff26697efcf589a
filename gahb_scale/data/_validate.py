"""Argument checks shared by the dataset builders, so every bad value gets the same clear message."""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..errors import UserInputError


def int_at_least(name: str, value: object, minimum: int) -> int:
    """Return `value` as an int, or raise UserInputError naming `name` unless it is an integer >= minimum."""
    # bool is an Integral subclass, but `n=True` is always a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise UserInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def non_negative_float(name: str, value: object) -> float:
    """Return `value` as a float, or raise UserInputError naming `name` unless it is finite and >= 0."""
    if _finite_real(value) and value >= 0:
        return float(value)
    raise UserInputError(f"{name} must be a finite number >= 0, got {value!r}")


def positive_float(name: str, value: object) -> float:
    """Return `value` as a float, or raise UserInputError naming `name` unless it is finite and > 0."""
    if _finite_real(value) and value > 0:
        return float(value)
    raise UserInputError(f"{name} must be a finite number > 0, got {value!r}")


def _finite_real(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def seeded_rng(seed: object) -> np.random.Generator:
    """A numpy Generator from an integer seed >= 0; refuses None so nothing is silently unseeded."""
    return np.random.default_rng(int_at_least("seed", seed, 0))
