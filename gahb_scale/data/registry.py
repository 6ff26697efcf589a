"""Build a dataset pool by kind name: the one entry point the training and study layers use.

A kind's parameters are its model in `gahb_scale.dataset_params`, the same models a study spec's
datasets are validated with; each kind's builder takes the validated model.
"""

from __future__ import annotations

from typing import Callable

from pydantic import ValidationError
from torch import Tensor

from ..dataset_params import (DATASET_KINDS, DATASET_PARAMS, CalphaParams, DatasetParams, DiscsParams, FolderParams,
                              PhotosParams)
from ..errors import UserInputError
from .calpha import calpha_images
from .discs import disc_images
from .embedded import photo_patches
from .image_folder import load_image_folder


def _calpha(n: int, size: int, seed: int, params: CalphaParams) -> Tensor:
    return calpha_images(n, params.alpha, size=size, seed=seed, beta=params.beta)


def _discs(n: int, size: int, seed: int, params: DiscsParams) -> Tensor:
    return disc_images(n, size, seed=seed, antialiasing=params.antialiasing)[0]


def _folder(n: int, size: int, seed: int, params: FolderParams) -> Tensor:
    # The pool is the folder's first n images in path order, near-duplicates removed; `seed` plays
    # no part (the split's seed decides who trains on what). limit=None keeps one cache file per
    # folder for every n.
    images = load_image_folder(params.path, size, cache_dir=params.cache_dir, crop=params.crop,
                               near_duplicate_threshold=params.near_duplicate_threshold)
    if len(images) < n:
        raise UserInputError(f"image folder {params.path} holds {len(images)} images (after removing "
                             f"{images.duplicates_removed} near-duplicates), fewer than the n={n} needed")
    return images.float_images(slice(0, n))


def _photos(n: int, size: int, seed: int, params: PhotosParams) -> Tensor:
    return photo_patches(n, size, seed=seed)


_BUILDERS: dict[str, Callable[[int, int, int, DatasetParams], Tensor]] = {
    "calpha": _calpha,
    "discs": _discs,
    "folder": _folder,
    "photos": _photos,
}


def build_pool(kind: str, n: int, size: int, seed: int, **params: object) -> Tensor:
    """`n` float32 images (n, 1, size, size) in [0, 1] of dataset `kind` (one of DATASET_KINDS),
    with the parameters of that kind's model in `gahb_scale.dataset_params` (defaults filled in).

    An unknown kind, and parameters the kind's model rejects (unknown, missing, out of range),
    raise UserInputError naming them.
    """
    if kind not in DATASET_PARAMS:
        raise UserInputError(f"unknown dataset kind {kind!r}; expected one of {', '.join(DATASET_KINDS)}")
    model = DATASET_PARAMS[kind]
    try:
        validated = model.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UserInputError(f"bad parameters for dataset kind {kind!r}: {problems} "
                             f"(accepted: {', '.join(model.model_fields) or 'none'})") from None
    return _BUILDERS[kind](n, size, seed, validated)
