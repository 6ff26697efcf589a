"""Build a dataset pool by kind name: the one entry point the training and study layers use.

Each kind has a small builder whose keyword-only arguments are that kind's parameters; the
builder's signature is the single source of truth for which parameters exist and which are required.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

from torch import Tensor

from ..errors import UserInputError
from .calpha import calpha_images
from .discs import disc_images
from .embedded import photo_patches
from .image_folder import load_image_folder


def _calpha(n: int, size: int, seed: int, *, alpha: float, beta: float | None = None) -> Tensor:
    return calpha_images(n, alpha, size=size, seed=seed, beta=beta)


def _discs(n: int, size: int, seed: int, *, antialiasing: int = 2) -> Tensor:
    return disc_images(n, size, seed=seed, antialiasing=antialiasing)[0]


def _folder(n: int, size: int, seed: int, *, path: str | Path, cache_dir: str | Path | None = None,
            crop: str = "center", near_duplicate_threshold: float | None = 0.95) -> Tensor:
    # The pool is the folder's first n images in path order, near-duplicates removed; `seed` plays
    # no part (the split's seed decides who trains on what). limit=None keeps one cache file per
    # folder for every n.
    images = load_image_folder(path, size, cache_dir=cache_dir, crop=crop,
                               near_duplicate_threshold=near_duplicate_threshold)
    if len(images) < n:
        raise UserInputError(f"image folder {path} holds {len(images)} images (after removing "
                             f"{images.duplicates_removed} near-duplicates), fewer than the n={n} needed")
    return images.float_images(slice(0, n))


def _photos(n: int, size: int, seed: int) -> Tensor:
    return photo_patches(n, size, seed=seed)


_BUILDERS: dict[str, Callable[..., Tensor]] = {
    "calpha": _calpha,
    "discs": _discs,
    "folder": _folder,
    "photos": _photos,
}
DATASET_KINDS = tuple(_BUILDERS)


def build_pool(kind: str, n: int, size: int, seed: int, **params: object) -> Tensor:
    """`n` float32 images (n, 1, size, size) in [0, 1] of dataset `kind` (one of DATASET_KINDS).

    Parameters by kind: calpha(alpha, beta=None), discs(antialiasing=2), folder(path, cache_dir=None,
    crop="center", near_duplicate_threshold=0.95), photos(). Unknown kinds, unknown parameters and
    missing required ones raise UserInputError naming them.
    """
    if kind not in _BUILDERS:
        raise UserInputError(f"unknown dataset kind {kind!r}; expected one of {', '.join(DATASET_KINDS)}")
    builder = _BUILDERS[kind]
    _check_params(kind, builder, params)
    return builder(n, size, seed, **params)


def _check_params(kind: str, builder: Callable[..., Tensor], params: dict[str, object]) -> None:
    accepted = {name: p for name, p in inspect.signature(builder).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    described = ", ".join(accepted) or "none"
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UserInputError(f"unknown parameter(s) {', '.join(unknown)} for dataset kind {kind!r} "
                             f"(accepted: {described})")
    missing = [name for name, p in accepted.items() if p.default is inspect.Parameter.empty and name not in params]
    if missing:
        raise UserInputError(f"dataset kind {kind!r} needs parameter(s) {', '.join(missing)}")
