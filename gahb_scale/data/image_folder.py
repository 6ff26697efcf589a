"""A folder of photographs the user already has (CelebA, LSUN, ...), prepared by the authors' recipe.

Nothing is downloaded. As in the authors' `load_CelebA_dataset` / `prep_celeba` / `remove_repeats`:
each image is cropped (CelebA: `im[29:-29, 9:-9]`, the 160×160 face region of the 178×218 aligned
images; LSUN: the top-left square), resized as an RGB image with PIL's bicubic filter, and made grey
as the mean of its three channels. Near-duplicates are then removed before any split: of two images
whose mean-removed correlation on copies pooled to about 20×20 exceeds 0.95 in absolute value, the
later one goes, so one face cannot sit in split A, split B and the test set at once.

The grey images are kept as uint8: the channel mean rounded to the nearest of 256 levels (the authors
keep the float mean; the difference, at most half a level, is the size of the 8-bit rounding already
in every channel) — a quarter of float32's memory, and what a trial converts to float only for its own
images. Decoding and de-duplicating a large folder is slow, so the result is cached as `<key>.npy`
(read row by row: a process reads only the images it uses) beside `<key>.json` (the files kept), where the key hashes everything that determines it: each used file's relative path, size and
modification time, the output size, the limit, the crop, the threshold and the preprocessing
version. Editing, adding or renaming a used file, or changing the preprocessing, gives a new key
instead of a stale cache, without reading every file's bytes on every call.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..atomic import write_atomically
from ..errors import UserInputError, printable
from ..limits import MAX_IMAGE_PIXELS
from ._validate import int_at_least
from .transforms import to_float_images

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CROPS = ("celeba", "center", "top_left")
NEAR_DUPLICATE_THRESHOLD = 0.95  # the authors' |correlation| above which the later of two images goes
DUPLICATE_SIDE = 20  # near-duplicates are compared on copies pooled by int(side / 20), as the authors do
# Bump whenever the preprocessing changes, so caches written by the old code are not reused.
PREPROCESSING_VERSION = "authors-crop/bicubic-rgb/channel-mean-uint8/dedup/v3"

# Every image PIL would warn about as a possible decompression bomb (above 89 M pixels) exceeds
# MAX_IMAGE_PIXELS and is refused by name, so its warning would only repeat that, out of place.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# PIL releases the GIL while decoding, so a few threads speed up large folders.
_DECODE_THREADS = min(8, os.cpu_count() or 1)


class CachedImages:
    """The uint8 images of a cached `.npy` pool, read row by row with `os.pread`: a process reads,
    and holds, only the images it asks for (a memory map would count every page it touches in the
    process's resident memory)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            self.shape, _, self.dtype = read_header(f)
            self.offset = f.tell()
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, index: np.ndarray) -> np.ndarray:
        out = np.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        order = np.argsort(index, kind="stable")
        with open(self.path, "rb") as f:
            start = 0
            while start < len(order):  # one read per run of consecutive rows
                stop = start + 1
                while stop < len(order) and index[order[stop]] == index[order[stop - 1]] + 1:
                    stop += 1
                first, count = int(index[order[start]]), stop - start
                data = os.pread(f.fileno(), count * self.row_bytes, self.offset + first * self.row_bytes)
                out[order[start:stop]] = np.frombuffer(data, dtype=self.dtype).reshape(count, *self.shape[1:])
                start = stop
        return out


@dataclass(frozen=True)
class FolderImages:
    """A prepared pool of images (a folder's, or the embedded photographs' tiles): its (n, 1, size,
    size) uint8 images, in memory or in the cache (`CachedImages`); `files` the relative paths kept
    (pool order); `duplicates_removed` (None: the pool is not de-duplicated)."""

    source: np.ndarray | CachedImages
    files: tuple[str, ...]
    duplicates_removed: int | None
    cache_files: tuple[Path, Path] | None = None  # (images, files kept) where it is or would be cached

    @property
    def cached(self) -> bool:
        return isinstance(self.source, CachedImages)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def grey(self) -> np.ndarray:
        """Every image, uint8 (this reads the whole pool)."""
        return self.source if isinstance(self.source, np.ndarray) else self.source.rows(np.arange(len(self)))

    def uint8_images(self, index: Tensor | slice = slice(None)) -> Tensor:
        """The images at `index` as a uint8 tensor; from the cache only those are read."""
        rows = np.arange(len(self))[index] if isinstance(index, slice) else index.numpy()
        if isinstance(self.source, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(self.source[rows]))
        return torch.from_numpy(self.source.rows(rows))

    def float_images(self, index: Tensor | slice = slice(None)) -> Tensor:
        """The images at `index` as float32 in [0, 1], converting only those."""
        return to_float_images(self.uint8_images(index))


def load_image_folder(path: str | Path, size: int, cache_dir: str | Path | None = None, limit: int | None = None,
                      crop: str = "center", near_duplicate_threshold: float | None = NEAR_DUPLICATE_THRESHOLD,
                      write_cache: bool = True) -> FolderImages:
    """Every .jpg/.jpeg/.png under `path`, prepared by the authors' recipe at size×size.

    Files are found recursively (suffix case-insensitive) and sorted by relative path; `limit`
    keeps the first `limit`. `crop` is "celeba" (`im[29:-29, 9:-9]`, then the centre square if
    that is not square), "center" (the centre square) or "top_left" (the top-left square, the
    authors' LSUN crop). `near_duplicate_threshold=None` keeps near-duplicates. With `cache_dir`,
    a second call on unchanged files reads the cache and decodes nothing; `write_cache=False`
    leaves a new cache unwritten (`cache_image_folder` writes it once the caller's checks pass).
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
    cache_files = None
    if cache_dir is not None:
        key = _cache_key(root, files, settings)
        cache_files = (Path(cache_dir) / f"{key}.npy", Path(cache_dir) / f"{key}.json")
        images_file, files_file = cache_files
        if images_file.exists():  # written last: its presence vouches for the list of files
            return read_prepared_folder(images_file)
    grey = _decode_all(root, files, size, crop)
    keep = np.ones(len(files), dtype=bool)
    if near_duplicate_threshold is not None:
        keep = ~near_duplicates(torch.from_numpy(grey), near_duplicate_threshold).numpy()
    prepared = FolderImages(grey[keep], tuple(f.as_posix() for f, k in zip(files, keep) if k), int((~keep).sum()),
                            cache_files)
    return cache_image_folder(prepared) if write_cache else prepared


def read_prepared_folder(images_file: str | Path) -> FolderImages:
    """The pool a `load_image_folder` call cached as `images_file` (`<key>.npy`, beside its `<key>.json`),
    read as it was prepared: the folder itself is not looked at, so a pool stays the one it was
    even if its folder changes."""
    images_file = Path(images_file)
    files_file = images_file.with_suffix(".json")
    kept = json.loads(files_file.read_text())
    return FolderImages(CachedImages(images_file), tuple(kept["files"]), kept["duplicates_removed"],
                        (images_file, files_file))


def cache_image_folder(prepared: FolderImages) -> FolderImages:
    """Write a folder decoded by `load_image_folder(..., write_cache=False)` to its cache (the list
    of files first, the images last: their presence vouches for the list); the cached copy."""
    if prepared.cached or prepared.cache_files is None:
        return prepared
    images_file, files_file = prepared.cache_files
    write_atomically(files_file, json.dumps({"files": list(prepared.files),
                                             "duplicates_removed": prepared.duplicates_removed}).encode())
    write_atomically(images_file, _npy_bytes(prepared.grey))
    return FolderImages(CachedImages(images_file), prepared.files, prepared.duplicates_removed, prepared.cache_files)


def near_duplicates(images: Tensor, threshold: float = NEAR_DUPLICATE_THRESHOLD, chunk_size: int = 2048) -> Tensor:
    """Bool (n,): True for every image whose mean-removed correlation with an EARLIER image exceeds
    `threshold` in absolute value (the authors' `remove_repeats`: drop the later of each pair).

    As the authors do, images are first average-pooled by int(side / 20) (80 -> 20x20, 40 -> 20x20,
    32 and less: compared as they are); the correlation does not depend on the images' scale or
    dtype. A flat image has no direction and correlates with nothing. Images are pooled and compared
    `chunk_size` at a time, each chunk against every earlier image, so 2·10^5 images of 80×80 need
    neither a float copy of the pool nor an n × n matrix.
    """
    pool = max(1, images.shape[-1] // DUPLICATE_SIDE)
    rows = torch.cat([_unit_rows(F.avg_pool2d(chunk.double(), pool).flatten(1)) for chunk in images.split(chunk_size)])
    duplicate = torch.zeros(len(rows), dtype=torch.bool)
    for start in range(0, len(rows), chunk_size):
        stop = min(start + chunk_size, len(rows))
        correlations = rows[start:stop] @ rows[:stop].T  # (chunk, stop): this chunk against all before it
        earlier = torch.arange(stop)[None, :] < torch.arange(start, stop)[:, None]
        duplicate[start:stop] = ((correlations.abs() > threshold) & earlier).any(dim=1)
    return duplicate


def _unit_rows(rows: Tensor) -> Tensor:
    """Mean-removed, unit-norm float32 rows; a flat row becomes zeros (it correlates with nothing)."""
    rows = rows - rows.mean(dim=1, keepdim=True)
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
    return torch.where(norms > 1e-9 * scale, rows / norms, 0.0).float()


def _image_files(root: Path) -> list[Path]:
    """Relative paths of the image files under `root`, sorted; UserInputError if there are none."""
    if not root.exists():
        raise UserInputError(f"image folder not found: {printable(str(root))}")
    if not root.is_dir():
        raise UserInputError(f"image folder path is not a directory: {printable(str(root))}")
    found = [p for p in _walk(root) if p.suffix.lower() in IMAGE_SUFFIXES]
    files = [p for p in found if p.is_file()]
    # an image linked to but not there is said, not skipped
    if broken := sorted(p for p in set(found) - set(files) if p.is_symlink()):
        raise UserInputError(f"{len(broken)} link(s) under {printable(str(root))} lead to no file: "
                             f"{', '.join(printable(str(p)) for p in broken[:5])}{', ...' if len(broken) > 5 else ''}")
    # Sort on the POSIX string so the order (and thus the pool) is the same on every OS.
    files = sorted((p.relative_to(root) for p in files), key=Path.as_posix)
    if not files:
        raise UserInputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) found under {printable(str(root))}")
    return files


def _walk(root: Path):
    """Every entry under `root` that is no folder, through linked folders too (a dataset assembled
    from links to other disks), each real folder once, under its own path where the tree holds it
    without links (so a link to a folder inside, or back up, changes nothing) and otherwise under
    the first link in sorted order. A folder that cannot be read is an error, not a gap."""
    def unreadable(error: OSError) -> None:
        raise UserInputError(f"cannot read folder {printable(str(error.filename))}: {error.strerror}")

    plain = {os.path.realpath(folder): folder for folder, _, _ in os.walk(root, onerror=unreadable)}
    seen = set()
    for folder, subfolders, names in os.walk(root, onerror=unreadable, followlinks=True):
        subfolders.sort()
        if (real := os.path.realpath(folder)) in seen or plain.get(real, folder) != folder:
            subfolders.clear()
            continue
        seen.add(real)
        yield from (Path(folder) / name for name in names)


def _cache_key(root: Path, files: list[Path], settings: str) -> str:
    digest = hashlib.sha256(settings.encode())
    for relative in files:
        stat = (root / relative).stat()
        # Length prefixes keep the boundaries between file names unambiguous.
        name = relative.as_posix().encode()
        digest.update(len(name).to_bytes(8, "little") + name)
        digest.update(stat.st_size.to_bytes(8, "little") + stat.st_mtime_ns.to_bytes(16, "little", signed=True))
    return digest.hexdigest()


def _decode_all(root: Path, files: list[Path], size: int, crop: str) -> np.ndarray:
    """Every file decoded, (n, 1, size, size) uint8; UserInputError naming every file that cannot
    be (up to 20 of them)."""
    def decode(relative: Path) -> np.ndarray | UserInputError:
        try:
            return _load_grey(root / relative, size, crop)
        except UserInputError as error:
            return error

    with ThreadPoolExecutor(_DECODE_THREADS) as pool:
        images = list(pool.map(decode, files))
    bad = [str(image) for image in images if isinstance(image, UserInputError)]
    if bad:
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise UserInputError(f"{len(bad)} of {len(files)} image files under {printable(str(root))} cannot be used:\n  "
                             + "\n  ".join(bad[:20]) + more)
    return np.stack(images)[:, None]


def _load_grey(file: Path, size: int, crop: str) -> np.ndarray:
    """One file as a (size, size) uint8 array, the rounded mean of R, G and B; UserInputError naming
    the file if it cannot be decoded, has more than MAX_IMAGE_PIXELS pixels (checked from its
    header, before decoding) or is too small for its crop."""
    name = printable(str(file))
    try:
        with Image.open(file) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise UserInputError(f"image file {name} is {width}x{height}: more than {MAX_IMAGE_PIXELS:,} pixels, "
                                     "refused before decoding (a decompression bomb, or far larger than any photo)")
            rgb = np.asarray(_preprocess(_as_rgb(image), size, crop, name), dtype=np.int32)
    except UserInputError:
        raise
    except Exception as error:  # noqa: BLE001 - decoders raise anything (SyntaxError for a bad PNG chunk)
        raise UserInputError(f"cannot read image file {name}: {printable(f'{type(error).__name__}: {error}')}") from None
    return ((2 * rgb.sum(axis=2) + 3) // 6).astype(np.uint8)  # round((R + G + B) / 3), halves up


def _as_rgb(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB. PIL converts 16-bit grey (modes I;16*, I) by clipping at 255, which
    would turn most of an image white: those are scaled to 8 bits instead (65535 -> 255)."""
    if image.mode.startswith("I"):
        deep = np.asarray(image).astype(np.int64).clip(0, 65535)
        image = Image.fromarray(((deep * 255 + 32767) // 65535).astype(np.uint8))  # 2-D uint8: mode L
    return image.convert("RGB")


def _preprocess(image: Image.Image, size: int, crop: str, file: str) -> Image.Image:
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


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
