"""A folder of photographs the user already has (CelebA, LSUN, ...), prepared by the authors' recipe.

Nothing is downloaded. As in the authors' `load_CelebA_dataset` / `prep_celeba` / `remove_repeats`:
each image is cropped (CelebA: `im[29:-29, 9:-9]`, the 160×160 face region of the 178×218 aligned
images; LSUN: the top-left square), resized as an RGB image with PIL's bicubic filter, and made grey
as the mean of its three channels in [0, 1]. Near-duplicates are then removed before any split: of
two images whose mean-removed correlation on copies pooled to about 20×20 exceeds 0.95 in absolute
value, the later one goes, so one face cannot sit in split A, split B and the test set at once.

The grey images are kept as the uint16 channel sums R + G + B (grey = sum / 765): exact, at a quarter
of float32's memory. Decoding and de-duplicating a large folder is slow, so the result is cached as
`<key>.npz`, where the key hashes everything that determines it: each used file's relative path, size
and modification time, the output size, the limit, the crop, the threshold and the preprocessing
version. Editing, adding or renaming a used file, or changing the preprocessing, gives a new key
instead of a stale cache, without reading every file's bytes on every call.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..errors import UserInputError
from ._validate import int_at_least

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CROPS = ("celeba", "center", "top_left")
DUPLICATE_SIDE = 20  # near-duplicates are compared on copies pooled by int(side / 20), as the authors do
GREY_SCALE = 3 * 255  # grey = (R + G + B) / 765
# Bump whenever the preprocessing changes, so caches written by the old code are not reused.
PREPROCESSING_VERSION = "authors-crop/bicubic-rgb/channel-mean/dedup/v2"

# PIL releases the GIL while decoding, so a few threads speed up large folders.
_DECODE_THREADS = min(8, os.cpu_count() or 1)


@dataclass(frozen=True)
class FolderImages:
    """A prepared folder: `grey_sums` (n, 1, size, size) uint16 holding R + G + B of each image,
    `files` the relative paths kept (pool order), `duplicates_removed` how many were dropped."""

    grey_sums: Tensor
    files: tuple[str, ...]
    duplicates_removed: int

    def __len__(self) -> int:
        return len(self.grey_sums)

    def float_images(self, index: Tensor | slice = slice(None)) -> Tensor:
        """Grey float32 images in [0, 1] (the authors' channel mean), converting only `index`."""
        return self.grey_sums[index].float() / GREY_SCALE


def load_image_folder(path: str | Path, size: int, cache_dir: str | Path | None = None, limit: int | None = None,
                      crop: str = "center", near_duplicate_threshold: float | None = 0.95) -> FolderImages:
    """Every .jpg/.jpeg/.png under `path`, prepared by the authors' recipe at size×size.

    Files are found recursively (suffix case-insensitive) and sorted by relative path; `limit`
    keeps the first `limit`. `crop` is "celeba" (`im[29:-29, 9:-9]`, then the centre square if
    that is not square), "center" (the centre square) or "top_left" (the top-left square, the
    authors' LSUN crop). `near_duplicate_threshold=None` keeps near-duplicates. With `cache_dir`,
    a second call on unchanged files reads the cache and decodes nothing.
    """
    root = Path(path)
    size = int_at_least("size", size, 1)
    if limit is not None:
        limit = int_at_least("limit", limit, 1)
    if crop not in CROPS:
        raise UserInputError(f"crop must be one of {', '.join(CROPS)}, got {crop!r}")
    if near_duplicate_threshold is not None and not 0 < near_duplicate_threshold < 1:
        raise UserInputError(f"near_duplicate_threshold must lie in (0, 1) or be None, got {near_duplicate_threshold}")
    files = _image_files(root)[:limit]
    settings = f"{PREPROCESSING_VERSION}|size={size}|limit={limit}|crop={crop}|duplicates={near_duplicate_threshold}"
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"{_cache_key(root, files, settings)}.npz"
        if cache_file.exists():
            with np.load(cache_file) as cached:
                return FolderImages(torch.from_numpy(cached["grey_sums"]), tuple(cached["files"].tolist()),
                                    int(cached["duplicates_removed"]))
    grey_sums = _decode_all(root, files, size, crop)
    keep = np.ones(len(files), dtype=bool)
    if near_duplicate_threshold is not None:
        keep = ~near_duplicates(grey_sums, near_duplicate_threshold).numpy()
    prepared = FolderImages(grey_sums[torch.from_numpy(keep)],
                            tuple(f.as_posix() for f, k in zip(files, keep) if k), int((~keep).sum()))
    if cache_file is not None:
        _save_atomically(cache_file, grey_sums=prepared.grey_sums.numpy(), files=np.array(prepared.files, dtype=str),
                         duplicates_removed=np.array(prepared.duplicates_removed))
    return prepared


def near_duplicates(images: Tensor, threshold: float = 0.95, chunk_size: int = 2048) -> Tensor:
    """Bool (n,): True for every image whose mean-removed correlation with an EARLIER image exceeds
    `threshold` in absolute value (the authors' `remove_repeats`: drop the later of each pair).

    As the authors do, images are first average-pooled by int(side / 20) (80 -> 20x20, 40 -> 20x20,
    32 and less: compared as they are); the correlation does not depend on the images' scale or
    dtype. A flat image has no direction and correlates with nothing. Images are pooled and compared
    `chunk_size` at a time, each chunk against every earlier image, so 2·10^5 images of 80×80 need
    neither a float copy of the pool nor an n × n matrix.
    """
    pool = max(1, images.shape[-1] // DUPLICATE_SIDE)
    rows = torch.cat([F.avg_pool2d(chunk.double(), pool).flatten(1) for chunk in images.split(chunk_size)])
    rows = rows - rows.mean(dim=1, keepdim=True)
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    rows = torch.where(norms > 1e-12 * norms.max().clamp_min(1e-300), rows / norms, 0.0).float()
    duplicate = torch.zeros(len(rows), dtype=torch.bool)
    for start in range(0, len(rows), chunk_size):
        stop = min(start + chunk_size, len(rows))
        correlations = rows[start:stop] @ rows[:stop].T  # (chunk, stop): this chunk against all before it
        earlier = torch.arange(stop)[None, :] < torch.arange(start, stop)[:, None]
        duplicate[start:stop] = ((correlations.abs() > threshold) & earlier).any(dim=1)
    return duplicate


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


def _cache_key(root: Path, files: list[Path], settings: str) -> str:
    digest = hashlib.sha256(settings.encode())
    for relative in files:
        stat = (root / relative).stat()
        # Length prefixes keep the boundaries between file names unambiguous.
        name = relative.as_posix().encode()
        digest.update(len(name).to_bytes(8, "little") + name)
        digest.update(stat.st_size.to_bytes(8, "little") + stat.st_mtime_ns.to_bytes(16, "little", signed=True))
    return digest.hexdigest()


def _decode_all(root: Path, files: list[Path], size: int, crop: str) -> Tensor:
    """Every file decoded; UserInputError naming every file that cannot be (up to 20 of them)."""
    def decode(relative: Path) -> np.ndarray | UserInputError:
        try:
            return _load_grey_sum(root / relative, size, crop)
        except UserInputError as error:
            return error

    with ThreadPoolExecutor(_DECODE_THREADS) as pool:
        images = list(pool.map(decode, files))
    bad = [str(image) for image in images if isinstance(image, UserInputError)]
    if bad:
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise UserInputError(f"{len(bad)} of {len(files)} image files under {root} cannot be used:\n  "
                             + "\n  ".join(bad[:20]) + more)
    return torch.from_numpy(np.stack(images)).unsqueeze(1)


def _load_grey_sum(file: Path, size: int, crop: str) -> np.ndarray:
    """One file as a (size, size) uint16 array of R + G + B; UserInputError naming the file if it
    cannot be decoded or is too small for its crop."""
    try:
        with Image.open(file) as image:
            rgb = np.asarray(_preprocess(image.convert("RGB"), size, crop, file), dtype=np.uint16)
    except UserInputError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UserInputError(f"cannot read image file {file}: {error}") from error
    return rgb.sum(axis=2, dtype=np.uint16)


def _preprocess(image: Image.Image, size: int, crop: str, file: Path) -> Image.Image:
    """The crop, then a bicubic resize of the RGB image to size×size (PIL, as the authors)."""
    width, height = image.size
    if crop == "celeba":
        if width <= 18 or height <= 58:
            raise UserInputError(f"image file {file} is {width}x{height}: too small for the CelebA crop "
                                 "im[29:-29, 9:-9]")
        image = image.crop((9, 29, width - 9, height - 29))
        width, height = image.size
    side = min(width, height)
    left, top = (0, 0) if crop == "top_left" else ((width - side) // 2, (height - side) // 2)
    square = image.crop((left, top, left + side, top + side))
    return square.resize((size, size), Image.Resampling.BICUBIC)


def _save_atomically(target: Path, **arrays: np.ndarray) -> None:
    """Write `arrays` to `target` via a temp file in the same folder, so readers never see half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=target.parent, prefix=target.stem, suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as temp_file:
            np.savez(temp_file, **arrays)
        os.replace(temp_name, target)
    except BaseException:
        os.unlink(temp_name)
        raise
