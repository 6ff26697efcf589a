"""A small real-photograph dataset with no download: tiles of the photographs in scikit-image's wheel.

Each photograph is turned grey and reduced to scales 1, 1/2 and 1/4 (box-filtered, so anti-aliased);
each scale is cut into a grid of NON-overlapping size×size tiles. No two tiles share a pixel of the
same scale; tiles of different scales of one photograph do show the same scene, at different
resolutions. Two kinds of tile are then dropped, so that splits of the pool are genuinely disjoint
training sets (the split-pair experiment checks that two models saw different images):
- flat tiles (one grey level), which carry no image: at 16×16 the astronaut's black backdrop gives
  54 identical ones, which would sit in split A, split B and the test set at once;
- near-duplicates, by the rule folders follow (`image_folder.near_duplicates`, the authors'
  `remove_repeats`): of two tiles whose mean-removed correlation exceeds 0.95, the later goes. At
  16×16, 404 of the 895 are tiles of one periodic brick wall.
The comparison is quadratic in the number of tiles (4 times as many at half the size, 16 times the
comparisons): on 2 CPUs about 1 s at 16×16, 11 s at 8×8 and minutes at 4×4, once per process.
"""

from __future__ import annotations

import functools

import numpy as np
import skimage.data
import torch
from PIL import Image
from torch import Tensor

from ..errors import UserInputError
from ._validate import int_at_least, seeded_rng
from .image_folder import FolderImages, near_duplicates
from .transforms import to_float_images

# Natural photographs bundled in the scikit-image wheel (all load offline). Fixed on purpose:
# changing it changes every pool built from it.
PHOTO_NAMES = ("astronaut", "camera", "chelsea", "coffee", "coins", "moon", "rocket", "grass",
               "gravel", "brick", "clock", "hubble_deep_field")
PYRAMID_FACTORS = (1, 2, 4)  # reduction factors: scales 1, 1/2, 1/4


def photo_patches(n: int, size: int, seed: int = 0) -> Tensor:
    """`n` grey size×size photo tiles, float32 (n, 1, size, size) in [0, 1].

    The tile pool (see `photo_pool_size`) is shuffled by `seed` and the first `n` returned, so a
    larger `n` extends a smaller one. Asking for more tiles than the pool holds is an error.
    """
    n = int_at_least("n", n, 1)
    pool = _tile_pool(int_at_least("size", size, 1))
    if n > len(pool):
        raise UserInputError(f"asked for n={n} photo patches of size {size}, but the embedded photographs "
                             f"give only {len(pool)} non-overlapping tiles of that size")
    return to_float_images(torch.from_numpy(_shuffled_tiles(size, seed)[:n])).unsqueeze(1)


def photo_pool(size: int) -> FolderImages:
    """Every tile as one fixed pool (the order of `photo_patches` with seed 0), uint8, for splits;
    `duplicates_removed` counts the flat tiles and near-duplicates dropped."""
    tiles = _shuffled_tiles(int_at_least("size", size, 1), seed=0)
    return FolderImages(tiles[:, None], files=(), duplicates_removed=_tiles_dropped(size))


def _shuffled_tiles(size: int, seed: int) -> np.ndarray:
    pool = _tile_pool(size)
    return pool[seeded_rng(seed).permutation(len(pool))]


def photo_pool_size(size: int) -> int:
    """How many non-overlapping size×size tiles the embedded photographs give, flat tiles and
    near-duplicates dropped."""
    return len(_tile_pool(int_at_least("size", size, 1)))


@functools.lru_cache(maxsize=8)
def _tile_pool(size: int) -> np.ndarray:
    """The kept tiles, uint8 (count, size, size), photograph by photograph, scale by scale, row-major."""
    tiles = _all_tiles(size)
    # a flat tile has no direction: near_duplicates would never flag it, nor another tile because of it
    tiles = tiles[tiles.min(axis=(1, 2)) < tiles.max(axis=(1, 2))]
    pool = tiles[~near_duplicates(torch.from_numpy(tiles)).numpy()]
    pool.flags.writeable = False  # shared by every caller through the cache
    return pool


@functools.lru_cache(maxsize=8)
def _tiles_dropped(size: int) -> int:
    return len(_all_tiles(size)) - len(_tile_pool(size))


def _all_tiles(size: int) -> np.ndarray:
    return np.concatenate([_grid_tiles(np.asarray(photo.reduce(factor)), size)
                           for photo in _grey_photos() for factor in PYRAMID_FACTORS])


@functools.lru_cache(maxsize=1)
def _grey_photos() -> tuple[Image.Image, ...]:
    return tuple(Image.fromarray(getattr(skimage.data, name)()).convert("L") for name in PHOTO_NAMES)


def _grid_tiles(image: np.ndarray, size: int) -> np.ndarray:
    """The non-overlapping size×size tiles of a grid centred on `image`: (rows·cols, size, size)."""
    rows, cols = image.shape[0] // size, image.shape[1] // size
    top, left = (image.shape[0] - rows * size) // 2, (image.shape[1] - cols * size) // 2
    grid = image[top:top + rows * size, left:left + cols * size]
    return grid.reshape(rows, size, cols, size).swapaxes(1, 2).reshape(rows * cols, size, size)
