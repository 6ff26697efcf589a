"""Stopping a training run right after its first checkpoint, as a kill would leave it."""

from __future__ import annotations

from typing import Callable

import pytest


class Interrupt(Exception):
    pass


def _stop(step, path) -> None:
    raise Interrupt


def train_until_first_checkpoint(train: Callable, *args, **kwargs) -> None:
    """Run `train` (`train_denoiser` or `train_pack`, with a checkpoint_path) until its first
    checkpoint is written, then stop it."""
    with pytest.raises(Interrupt):
        train(*args, on_checkpoint=_stop, **kwargs)
