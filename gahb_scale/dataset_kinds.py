"""The dataset kinds: one record per kind (`DatasetKind`), the one owner of its parameters, their
defaults and bounds, its builder, and whether its pool is finite.

A study spec validates `datasets[].params` with the kind's `params` model, and
`build_pool(kind, n, size, seed, **params)` and `split_pair_images` (the images of a split pair: A, B
and the held-out set) validate with the same model. The builders import torch
lazily: the spec imports this module, and `gahb-scale validate` must stay light.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .errors import UserInputError
from .limits import MAX_DISC_ANTIALIASING

if TYPE_CHECKING:
    from torch import Tensor

    from .data.image_folder import FolderImages

# A path given as text or as a pathlib.Path, kept as text (a spec stores it, a hash reads it).
_PathText = Annotated[str, BeforeValidator(lambda v: os.fspath(v) if isinstance(v, os.PathLike) else v)]


class DatasetParams(BaseModel):
    """The parameters of one kind: an unknown name, a NaN or an infinity is an error."""
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CalphaParams(DatasetParams):
    """C^α images: a C^α boundary between two C^β-regular backgrounds."""
    alpha: float = Field(gt=0, description="regularity of the boundary curve")
    beta: float | None = Field(default=None, ge=0, description="regularity of the backgrounds; None: = alpha")


def _disc_antialiasing() -> int:
    from .data.discs import DISC_ANTIALIASING  # lazy: the renderer owns its default, and imports torch
    return DISC_ANTIALIASING


class DiscsParams(DatasetParams):
    """Random discs by the authors' recipe (5 parameters: centre x, y, radius, foreground and background grey)."""
    antialiasing: int = Field(default_factory=_disc_antialiasing, ge=0, le=MAX_DISC_ANTIALIASING,
                              description="draw on a 2**antialiasing times finer grid, then low-pass and halve that "
                                          "many times (db2 wavelet)")


class FolderParams(DatasetParams):
    """Real images from a folder the user already has (CelebA, LSUN, ...), prepared by the authors'
    recipe: crop, bicubic RGB resize, grey = channel mean, near-duplicates removed before the split.

    The folder must exist where the parameters are validated (for a study: where its spec is read),
    and relative paths are stored absolute, because workers run in other directories. A preview
    (`gahb-scale validate`) passes a list as `missing_folders` in the validation context: a folder
    that does not exist is added to it instead of refused, so a spec's grid can be read before its
    data is on disk."""
    path: _PathText = Field(description="image folder")
    crop: Literal["celeba", "center", "top_left"] = Field(
        default="center", description="celeba: the authors' im[29:-29, 9:-9]; top_left: their LSUN square")
    near_duplicate_threshold: float | None = Field(
        default=0.95, gt=0, lt=1, description="drop the later of two images whose mean-removed correlation on "
                                              "copies pooled by int(side/20) exceeds this (the authors' 0.95); "
                                              "null keeps duplicates")
    cache_dir: _PathText | None = Field(default=None, description="where the prepared images are cached")

    @field_validator("path")
    @classmethod
    def _existing_folder(cls, v: str, info: ValidationInfo) -> str:
        p = Path(v).expanduser()
        if not p.exists() and isinstance(missing := (info.context or {}).get("missing_folders"), list):
            missing.append(v)
            return str(p.resolve())
        if not p.exists():
            raise ValueError(f"folder {v!r} does not exist (relative paths resolve against the current directory)")
        if not p.is_dir():
            raise ValueError(f"{v!r} is not a directory")
        return str(p.resolve())

    @field_validator("cache_dir")
    @classmethod
    def _absolute_cache(cls, v: str | None) -> str | None:
        if v is not None and "://" in v:
            raise ValueError(f"{v!r}: a folder path, not a URI: the prepared images are read by file offset, so "
                             f"they need a folder every node reads at the same path (a shared volume)")
        return v if v is None else str(Path(v).expanduser().resolve())


class PhotosParams(DatasetParams):
    """The real photographs bundled with scikit-image (the embedded default, works offline)."""


# Builders: (n, size, seed, validated params) -> n float32 images (n, 1, size, size) in [0, 1].
def _calpha(n: int, size: int, seed: int, params: CalphaParams) -> Tensor:
    from .data.calpha import calpha_images
    return calpha_images(n, params.alpha, size=size, seed=seed, beta=params.beta)


def _discs(n: int, size: int, seed: int, params: DiscsParams) -> Tensor:
    from .data.discs import disc_images
    return disc_images(n, size, seed=seed, antialiasing=params.antialiasing)[0]


def _folder(n: int, size: int, seed: int, params: FolderParams) -> Tensor:
    # The pool is the folder's first n images in path order, near-duplicates removed; `seed` plays
    # no part (the split's seed decides who trains on what).
    images = _folder_pool(size, params)
    if len(images) < n:
        raise UserInputError(f"image folder {params.path} holds {len(images)} images (after removing "
                             f"{images.duplicates_removed} near-duplicates), fewer than the n={n} needed")
    return images.float_images(slice(0, n))


def _photos(n: int, size: int, seed: int, params: PhotosParams) -> Tensor:
    from .data.embedded import photo_patches
    return photo_patches(n, size, seed=seed)


# Pools of the finite kinds: (size, validated params, write_cache) -> the whole pool, in the fixed
# order a split pair permutes.
def _folder_pool(size: int, params: FolderParams, write_cache: bool = True) -> FolderImages:
    from .data.image_folder import load_image_folder
    # limit=None keeps one cache file per folder for every n.
    return load_image_folder(params.path, size, cache_dir=params.cache_dir, crop=params.crop,
                             near_duplicate_threshold=params.near_duplicate_threshold, write_cache=write_cache)


def _photos_pool(size: int, params: PhotosParams, write_cache: bool = True) -> FolderImages:
    from .data.embedded import photo_pool
    return photo_pool(size)


@dataclass(frozen=True)
class DatasetKind:
    """One kind of dataset. `build(n, size, seed, params)` draws n images; a finite kind (a fixed
    set of images) also has `pool(size, params, write_cache)`, its whole pool, whose length is the
    pool's size; an infinite one (synthetic) draws every split as its own seeded stream.

    `version` goes up when the kind's images change for unchanged parameters, so trial ids change
    and models trained on the old images are not reused (hashed from 2 on: ids of a kind never
    bumped stay as they were)."""
    name: str
    params: type[DatasetParams]
    build: Callable[[int, int, int, Any], Tensor]
    pool: Callable[..., FolderImages] | None = None
    version: int = 1

    @property
    def finite(self) -> bool:
        return self.pool is not None


DATASET_KINDS: dict[str, DatasetKind] = {kind.name: kind for kind in (
    DatasetKind("calpha", CalphaParams, _calpha),
    DatasetKind("discs", DiscsParams, _discs),
    DatasetKind("folder", FolderParams, _folder, pool=_folder_pool),
    # 2: flat tiles and near-duplicates dropped from the pool
    DatasetKind("photos", PhotosParams, _photos, pool=_photos_pool, version=2),
)}


def dataset_kind(name: str) -> DatasetKind:
    """The record of kind `name`; an unknown kind is a UserInputError naming the known ones."""
    if name not in DATASET_KINDS:
        raise UserInputError(f"unknown dataset kind {name!r}; expected one of {', '.join(DATASET_KINDS)}")
    return DATASET_KINDS[name]


def build_pool(kind: str, n: int, size: int, seed: int, **params: object) -> Tensor:
    """`n` float32 images (n, 1, size, size) in [0, 1] of dataset `kind` (a key of DATASET_KINDS),
    with the parameters of that kind's model (defaults filled in).

    An unknown kind, and parameters the kind's model rejects (unknown, missing, out of range),
    raise UserInputError naming them.
    """
    record = dataset_kind(kind)
    return record.build(n, size, seed, _validated(record, params))


def _validated(record: DatasetKind, params: dict) -> DatasetParams:
    """`params` checked by the kind's model, defaults filled in; a rejected one is a UserInputError
    naming the parameter."""
    try:
        return record.params.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UserInputError(f"bad parameters for dataset kind {record.name!r}: {problems} "
                             f"(accepted: {', '.join(record.params.model_fields) or 'none'})") from None


_STREAMS = {"A": 0, "B": 1, "test": 2}


def _stream_seed(pair: int, part: str) -> int:
    """Seed of one synthetic stream: split pair p draws A, B and the held-out set from 3p, 3p+1, 3p+2."""
    return 3 * pair + _STREAMS[part]


def split_pair_images(kind: str, params: dict, size: int, n: int | dict[str, int], n_test: int, pair: int,
                      parts: tuple[str, ...] = ("A", "B", "test"), keep_uint8: bool = False,
                      pixel_shuffle_seed: int | None = None, pool: FolderImages | None = None) -> dict[str, Tensor]:
    """{"A": (n,1,S,S), "B": (n,1,S,S), "test": (n_test,1,S,S)} of split pair `pair` of dataset
    `kind` (with the parameters of its model), in [0, 1], restricted to `parts` (synthetic images
    cost time to make, a folder's are read from its prepared pool: a model needs only its own split).
    `n` may differ per split, {"A": 1000, "B": 64}: each split as it is at its own N, so a model's
    training images and a few of its partner's come from one reading of a folder's pool.

    - synthetic (calpha, discs): an unlimited supply, so A, B and the test set are three independent
      streams drawn with their own seeds. Image i of a stream depends only on (seed, i), so A for
      N = 10 is the start of A for N = 100 (nested, as in the paper) and a model's images do not
      depend on the other train sizes of a study — which is what lets trial ids stay stable.
    - finite (folder, photos): one fixed pool; the pair's seed orders it and A = "first N", B = "last N",
      test = the head (`gahb_scale.data.split_pair`), the authors' recipe. With `keep_uint8` its
      images stay uint8 (0…255), a quarter of float32, for a trainer that converts batch by batch.

    With `pixel_shuffle_seed` every image has its pixels moved by that one seeded permutation. `pool`:
    a finite dataset's pool as already prepared (`gahb_scale.data.image_folder.read_prepared_folder`),
    used instead of preparing it again from `params`.
    """
    from .data import shuffle_pixels, split_pair

    record = dataset_kind(kind)
    counts = {**(n if isinstance(n, dict) else {"A": n, "B": n}), "test": n_test}
    if not record.finite:
        validated = _validated(record, params)
        images = {name: record.build(counts[name], size, _stream_seed(pair, name), validated) for name in parts}
    else:  # a pool given is read as it is: its folder need not be on this machine
        pool = pool if pool is not None else record.pool(size, _validated(record, params))
        convert = pool.uint8_images if keep_uint8 else pool.float_images
        # the held-out set does not depend on N: taken from the split of the largest N given, so the
        # pool is checked to hold that split pair
        largest = max(count for name, count in counts.items() if name != "test")
        images = {name: convert(getattr(split_pair(len(pool), counts[name] if name != "test" else largest, n_test,
                                                   seed=pair), name.lower())) for name in parts}
    if pixel_shuffle_seed is not None:
        images = {name: shuffle_pixels(x, pixel_shuffle_seed) for name, x in images.items()}
    return images


def held_out_disc_parameters(params: dict, size: int, n_test: int, pair: int) -> Tensor:
    """(n_test, 5) generator parameters of the held-out images of split pair `pair` of a discs dataset
    (the stream `split_pair_images` draws them from), for the family's tangent space at each of them."""
    from .data.discs import disc_images
    validated = _validated(dataset_kind("discs"), params)
    return disc_images(n_test, size, seed=_stream_seed(pair, "test"), antialiasing=validated.antialiasing)[1]
