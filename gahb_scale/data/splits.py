"""Deterministic split pairs: two disjoint training sets A and B of size n plus a held-out test set.

As in the paper, A is "the first N" and B "the last N" images of one seeded ordering of the pool:
A and B never overlap, and for a fixed seed growing n only adds images (nested splits), so a
sweep over n compares models whose training sets extend one another.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UserInputError
from ._validate import int_at_least, seeded_rng


@dataclass(frozen=True)
class SplitPair:
    """Pool indices (LongTensors) of the two training sets and the held-out test set."""

    a: Tensor
    b: Tensor
    test: Tensor


def pool_size_needed(max_n: int, n_test: int) -> int:
    """The smallest pool that holds a split pair of size `max_n` and `n_test` test images."""
    return 2 * max_n + n_test


def split_pair(pool_size: int, n: int, n_test: int, seed: int) -> SplitPair:
    """Split range(pool_size), permuted by `seed`: test = its first n_test, A = the next n, B = the last n.

    The test set does not depend on n; A and B only grow with n.
    """
    pool_size = int_at_least("pool_size", pool_size, 1)
    n = int_at_least("n", n, 1)
    n_test = int_at_least("n_test", n_test, 0)
    needed = pool_size_needed(n, n_test)
    if needed > pool_size:
        raise UserInputError(f"a split pair with n={n} and n_test={n_test} needs 2*n + n_test = {needed} "
                             f"images, but the pool has only pool_size={pool_size}")
    order = torch.from_numpy(seeded_rng(seed).permutation(pool_size))
    return SplitPair(a=order[n_test:n_test + n], b=order[pool_size - n:], test=order[:n_test])
