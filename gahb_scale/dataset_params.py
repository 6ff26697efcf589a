"""The dataset kinds and their parameters: one pydantic model per kind, the one place their
defaults and bounds live.

A study spec's `datasets[].params` and `gahb_scale.data.build_pool(kind, ..., **params)` are both
validated with these models. No torch here: the study spec imports this module, and `gahb-scale
validate` must stay light.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# The authors' discs: drawn on a 2**2 times finer grid, then low-passed and halved twice.
DISC_ANTIALIASING = 2

# A path given as text or as a pathlib.Path, kept as text (a spec stores it, a hash reads it).
_PathText = Annotated[str, BeforeValidator(lambda v: os.fspath(v) if isinstance(v, os.PathLike) else v)]


class DatasetParams(BaseModel):
    """The parameters of one kind: an unknown name, a NaN or an infinity is an error."""
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CalphaParams(DatasetParams):
    """C^α images: a C^α boundary between two C^β-regular backgrounds."""
    alpha: float = Field(gt=0, description="regularity of the boundary curve")
    beta: float | None = Field(default=None, ge=0, description="regularity of the backgrounds; None: = alpha")


class DiscsParams(DatasetParams):
    """Random discs by the authors' recipe (5 parameters: centre x, y, radius, foreground and background grey)."""
    antialiasing: int = Field(default=DISC_ANTIALIASING, ge=0, le=4,
                              description="draw on a 2**antialiasing times finer grid, then low-pass and halve that "
                                          "many times (db2 wavelet)")


class FolderParams(DatasetParams):
    """Real images from a folder the user already has (CelebA, LSUN, ...), prepared by the authors'
    recipe: crop, bicubic RGB resize, grey = channel mean, near-duplicates removed before the split."""
    path: _PathText = Field(description="image folder")
    crop: Literal["celeba", "center", "top_left"] = Field(
        default="center", description="celeba: the authors' im[29:-29, 9:-9]; top_left: their LSUN square")
    near_duplicate_threshold: float | None = Field(
        default=0.95, gt=0, lt=1, description="drop the later of two images whose mean-removed correlation on "
                                              "copies pooled by int(side/20) exceeds this (the authors' 0.95); "
                                              "null keeps duplicates")
    cache_dir: _PathText | None = Field(default=None, description="where the prepared images are cached")


class PhotosParams(DatasetParams):
    """The real photographs bundled with scikit-image (the embedded default, works offline)."""


DATASET_PARAMS: dict[str, type[DatasetParams]] = {
    "calpha": CalphaParams,
    "discs": DiscsParams,
    "folder": FolderParams,
    "photos": PhotosParams,
}
DATASET_KINDS: tuple[str, ...] = tuple(DATASET_PARAMS)
