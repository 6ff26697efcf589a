"""Stage 0, prepare: every image folder decoded by the authors' recipe and cached once per study,
before Ray starts (`prepare_datasets`); then the images a trial trains and is tested on: split A
or B of pair p, and the pair's held-out set (`split_images`).

Two kinds of pools:
- synthetic (calpha, discs): an unlimited supply, so A, B and the test set are three independent
  streams drawn with their own seeds. Image i of a stream depends only on (seed, i), so A for
  N = 10 is the start of A for N = 100 (nested, as in the paper) and a trial's images do not depend
  on the other train sizes in the spec — which is what lets trial ids stay stable.
- finite (folder, photos): one fixed pool; the pair's seed orders it and A = "first N", B = "last N",
  test = the head (`gahb_scale.data.split_pair`), the authors' recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..data import FolderImages, disc_images, pool_size_needed, shuffle_pixels, split_pair
from ..data.image_folder import NEAR_DUPLICATE_THRESHOLD, cache_image_folder
from ..dataset_kinds import DATASET_KINDS
from ..errors import UserInputError
from .spec import DatasetSpec, StudySpec

_STREAMS = {"A": 0, "B": 1, "test": 2}


def _stream_seed(pair: int, part: str) -> int:
    """Seed of one synthetic stream: split pair p draws A, B and test from 3p, 3p+1, 3p+2."""
    return 3 * pair + _STREAMS[part]


def finite_pool(dataset: DatasetSpec, size: int, write_cache: bool = True) -> FolderImages | None:
    """The whole pool of a finite dataset (a folder prepared by the authors' recipe and cached under
    `params.cache_dir`, or the embedded photographs' tiles); None for a synthetic one."""
    kind = DATASET_KINDS[dataset.kind]
    if not kind.finite:
        return None
    return kind.pool(size, kind.params.model_validate(dataset.params), write_cache=write_cache)


@dataclass(frozen=True)
class PreparedDatasets:
    """The `datasets` table rows of a study, and its finite pools decoded but not yet cached."""
    rows: list[dict]
    pools: list[FolderImages]

    def cache(self) -> None:
        """Write the folders' caches (which tasks read): called once every check of the study passed."""
        for pool in self.pools:
            cache_image_folder(pool)


def prepare_datasets(spec: StudySpec) -> PreparedDatasets:
    """Before anything trains: prepare every folder dataset once (decode, authors' recipe, remove
    near-duplicates) and check that every finite pool holds the largest split pair. Nothing is
    written: a pool too small is a UserInputError naming it, and the caches are written by
    `PreparedDatasets.cache` once the study's other checks have passed too."""
    rows, pools = [], []
    for dataset in spec.datasets:
        row = {"study_id": spec.name, "dataset": dataset.name, "kind": dataset.kind, "pool_images": None,
               "duplicates_removed": None, "near_duplicate_threshold": None}
        if (pool := finite_pool(dataset, spec.image_size, write_cache=False)) is not None:
            pools.append(pool)
            row.update(pool_images=len(pool), duplicates_removed=pool.duplicates_removed,
                       # a folder's own threshold (None: duplicates kept), else the photos' one
                       near_duplicate_threshold=dataset.params.get("near_duplicate_threshold",
                                                                   NEAR_DUPLICATE_THRESHOLD))
        needed = pool_size_needed(max(spec.train_sizes), spec.test_images)
        if row["pool_images"] is not None and row["pool_images"] < needed:
            removed = f" after removing {row['duplicates_removed']} near-duplicates" if row["duplicates_removed"] else ""
            raise UserInputError(f"datasets[{spec.datasets.index(dataset)}] ({dataset.name!r}): the pool holds "
                                 f"{row['pool_images']} images{removed}, but N = {max(spec.train_sizes)} needs "
                                 f"2 x N + test_images = {needed} (two disjoint splits and the held-out set)")
        rows.append(row)
    return PreparedDatasets(rows, pools)


def split_images(dataset: DatasetSpec, size: int, n: int, n_test: int, pair: int,
                 parts: tuple[str, ...] = ("A", "B", "test"), keep_uint8: bool = False) -> dict[str, Tensor]:
    """{"A": (n,1,S,S), "B": (n,1,S,S), "test": (n_test,1,S,S)} for split pair `pair`, in [0, 1],
    restricted to `parts` (synthetic images cost time to make, a folder's are read from its prepared
    pool: a trial needs only its own split). With `keep_uint8` a finite pool's images stay uint8
    (0…255), a quarter of float32, for a trainer that converts batch by batch."""
    pool = finite_pool(dataset, size)
    if pool is None:
        kind = DATASET_KINDS[dataset.kind]
        params, counts = kind.params.model_validate(dataset.params), {"A": n, "B": n, "test": n_test}
        images = {name: kind.build(counts[name], size, _stream_seed(pair, name), params) for name in parts}
    else:
        convert = pool.uint8_images if keep_uint8 else pool.float_images
        split = split_pair(len(pool), n, n_test, seed=pair)
        images = {name: convert(index) for name, index in (("A", split.a), ("B", split.b), ("test", split.test))
                  if name in parts}
    if dataset.pixel_shuffle_seed is not None:
        images = {name: shuffle_pixels(x, dataset.pixel_shuffle_seed) for name, x in images.items()}
    return images


def test_disc_parameters(dataset: DatasetSpec, size: int, n_test: int, pair: int) -> Tensor:
    """(n_test, 5) generator parameters of the held-out images of a discs dataset (the stream
    `split_images` draws them from), for the family's tangent space at each of them."""
    if dataset.kind != "discs":
        raise ValueError(f"dataset {dataset.name!r} is {dataset.kind!r}, not discs: it has no disc parameters")
    return disc_images(n_test, size, seed=_stream_seed(pair, "test"), **dataset.params)[1]
