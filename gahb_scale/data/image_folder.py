"""Load a folder of photographs the user already has (CelebA, LSUN, ...) as grey square uint8 images.

Nothing is downloaded. Decoding a large folder is slow, so the result is cached as `<key>.npy`,
where the key hashes everything that determines it: each used file's relative path and bytes,
the output size, the limit, and the preprocessing version. Editing, adding or renaming a used
file, or changing the preprocessing, therefore gives a new key instead of a stale cache.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import UserInputError
from ._validate import int_at_least

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Bump whenever _preprocess changes, so caches written by the old code are not reused.
PREPROCESSING_VERSION = "centre-crop/grey-L/box-resize/v1"

# PIL releases the GIL while decoding, so a few threads speed up large folders.
_DECODE_THREADS = min(8, os.cpu_count() or 1)


def load_image_folder(path: str | Path, size: int, cache_dir: str | Path | None = None,
                      limit: int | None = None) -> Tensor:
    """Grey size×size uint8 images (n, 1, size, size) from every .jpg/.jpeg/.png under `path`.

    Files are found recursively (suffix case-insensitive) and sorted by relative path; `limit`
    keeps the first `limit`. Each is centre-cropped to a square, converted to grey (PIL "L") and
    box-filtered to size×size. With `cache_dir`, a second call on unchanged files reads the cache
    and decodes nothing.
    """
    root = Path(path)
    size = int_at_least("size", size, 1)
    if limit is not None:
        limit = int_at_least("limit", limit, 1)
    files = _image_files(root)[:limit]
    if cache_dir is None:
        return _decode_all(root, files, size)
    cache_file = Path(cache_dir) / f"{_cache_key(root, files, size, limit)}.npy"
    if cache_file.exists():
        return torch.from_numpy(np.load(cache_file))
    images = _decode_all(root, files, size)
    _save_atomically(cache_file, images.numpy())
    return images


def _image_files(root: Path) -> list[Path]:
    """Relative paths of the image files under `root`, sorted; UserInputError if there are none."""
    if not root.exists():
        raise UserInputError(f"image folder not found: {root}")
    if not root.is_dir():
        raise UserInputError(f"image folder path is not a directory: {root}")
    # Sort on the POSIX string so the order (and thus the pool) is the same on every OS.
    files = sorted((p.relative_to(root) for p in root.rglob("*")
                    if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=Path.as_posix)
    if not files:
        raise UserInputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    return files


def _cache_key(root: Path, files: list[Path], size: int, limit: int | None) -> str:
    digest = hashlib.sha256(f"{PREPROCESSING_VERSION}|size={size}|limit={limit}".encode())
    for relative in files:
        content = (root / relative).read_bytes()
        # Length prefixes keep (path, bytes) boundaries unambiguous.
        name = relative.as_posix().encode()
        digest.update(len(name).to_bytes(8, "little") + name + len(content).to_bytes(8, "little"))
        digest.update(content)
    return digest.hexdigest()


def _decode_all(root: Path, files: list[Path], size: int) -> Tensor:
    with ThreadPoolExecutor(_DECODE_THREADS) as pool:
        images = list(pool.map(lambda relative: _load_grey_square(root / relative, size), files))
    return torch.from_numpy(np.stack(images)).unsqueeze(1)


def _load_grey_square(file: Path, size: int) -> np.ndarray:
    """One file as a (size, size) uint8 array; UserInputError naming the file if it cannot be decoded."""
    try:
        with Image.open(file) as image:
            return np.asarray(_preprocess(image, size), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UserInputError(f"cannot read image file {file}: {error}") from error


def _preprocess(image: Image.Image, size: int) -> Image.Image:
    """Centre square crop, grey, then an area-averaging (box) resize to size×size."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side)).convert("L")
    return square.resize((size, size), Image.Resampling.BOX)


def _save_atomically(target: Path, array: np.ndarray) -> None:
    """Write `array` to `target` via a temp file in the same folder, so readers never see half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=target.parent, prefix=target.stem, suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as temp_file:
            np.save(temp_file, array)
        os.replace(temp_name, target)
    except BaseException:
        os.unlink(temp_name)
        raise

