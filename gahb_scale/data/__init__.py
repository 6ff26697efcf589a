"""Datasets for the denoiser studies: synthetic (C^α, discs), real folders, embedded photos; splits.

Every builder returns grey images as float32 (n, 1, size, size) tensors in [0, 1] (the folder loader
keeps uint8, `FolderImages.float_images` converts), deterministic in a `seed` argument. Plain
PyTorch/numpy: nothing here imports Ray or MLflow.
"""

from .calpha import calpha_images
from .discs import disc_images, render_discs
from .embedded import PHOTO_NAMES, photo_patches, photo_pool, photo_pool_size
from .image_folder import FolderImages, load_image_folder, near_duplicates
from .splits import SplitPair, pool_size_needed, split_pair
from .transforms import pixel_permutation, shuffle_pixels, to_float_images, unshuffle_pixels

__all__ = [
    "FolderImages",
    "PHOTO_NAMES",
    "SplitPair",
    "calpha_images",
    "disc_images",
    "load_image_folder",
    "near_duplicates",
    "photo_patches",
    "photo_pool",
    "photo_pool_size",
    "pixel_permutation",
    "pool_size_needed",
    "render_discs",
    "shuffle_pixels",
    "split_pair",
    "to_float_images",
    "unshuffle_pixels",
]
