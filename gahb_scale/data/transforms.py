"""Image transforms: a seeded fixed pixel shuffle (and its inverse) and uint8 -> float conversion.

Shuffling every image's pixels by one fixed permutation keeps the pixel statistics but destroys
spatial structure; denoisers trained on shuffled images test whether the inductive bias is spatial.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._validate import int_at_least, seeded_rng


def pixel_permutation(num_pixels: int, seed: int) -> Tensor:
    """The permutation of range(num_pixels) fixed by `seed`, as a LongTensor."""
    num_pixels = int_at_least("num_pixels", num_pixels, 1)
    return torch.from_numpy(seeded_rng(seed).permutation(num_pixels))


def shuffle_pixels(images: Tensor, seed: int) -> Tensor:
    """Move the spatial pixels of every image (and channel) by the same seeded permutation.

    Works on any (..., H, W) tensor; pixel k of the output is pixel `perm[k]` of the input.
    """
    perm = pixel_permutation(images.shape[-2] * images.shape[-1], seed).to(images.device)
    return _permute_spatial(images, perm)


def unshuffle_pixels(images: Tensor, seed: int) -> Tensor:
    """Undo `shuffle_pixels(images, seed)`."""
    perm = pixel_permutation(images.shape[-2] * images.shape[-1], seed).to(images.device)
    return _permute_spatial(images, torch.argsort(perm))


def _permute_spatial(images: Tensor, perm: Tensor) -> Tensor:
    flat = images.reshape(*images.shape[:-2], -1)
    return flat[..., perm].reshape(images.shape)


def to_float_images(images: Tensor) -> Tensor:
    """uint8 images (0..255) as float32 in [0, 1]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"to_float_images expects a uint8 tensor, got {images.dtype}")
    return images.float() / 255.0
