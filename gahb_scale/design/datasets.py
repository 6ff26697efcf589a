"""A spec's datasets as images: every image folder decoded by the authors' recipe and checked once
per study, before Ray starts (`prepare_datasets`), its cache written once the study's checks have
passed (`PreparedDatasets.cache`); then the images a trial trains and is tested on: split A or B of
pair p, and the pair's held-out set (`split_images`, drawn as the dataset kind's record says:
`gahb_scale.dataset_kinds.split_pair_images`).
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass

from torch import Tensor

from ..data import FolderImages, pool_size_needed
from ..data.image_folder import NEAR_DUPLICATE_THRESHOLD, cache_image_folder, read_prepared_folder
from ..dataset_kinds import DATASET_KINDS, split_pair_images
from ..errors import UserInputError
from .spec import DatasetSpec, StudySpec


def finite_pool(dataset: DatasetSpec, size: int, write_cache: bool = True) -> FolderImages | None:
    """The whole pool of a finite dataset (a folder prepared by the authors' recipe and cached under
    `params.cache_dir`, or the embedded photographs' tiles); None for a synthetic one."""
    kind = DATASET_KINDS[dataset.kind]
    if not kind.finite:
        return None
    return kind.pool(size, kind.params.model_validate(dataset.params), write_cache=write_cache)


# what a model keeps of the folder pool it began training on
POOL_RECORD = ("pool_images", "pool_files_sha256")


@dataclass(frozen=True)
class PreparedDatasets:
    """The `datasets` table rows of a study, and its finite pools (dataset name -> pool) decoded but
    not yet cached."""
    rows: list[dict]
    pools: dict[str, FolderImages]

    @property
    def has_folders(self) -> bool:
        """Whether a dataset is a folder of files (whose pool each model keeps, `cache`)."""
        return any(row["pool_files_sha256"] is not None for row in self.rows)

    def cache(self) -> dict[str, dict]:
        """Write the folders' caches: called once every check of the study passed. Returns each
        folder's prepared pool, by dataset name: "cache", the file every task reads (`split_images`)
        instead of the folder, so that the pool a study records is the one its models train and are
        measured on, whatever happens to the folder while the study runs; and "pool_images" and
        "pool_files_sha256" (its `datasets` row's), which each model beginning training on it keeps
        (`gahb_scale.study.store.pool_path`) and every run checks."""
        rows = {row["dataset"]: row for row in self.rows}
        return {name: {"cache": str(cache_image_folder(pool).cache_files[0]),
                       **{key: rows[name][key] for key in POOL_RECORD}}
                for name, pool in self.pools.items() if pool.cache_files is not None}


def prepare_datasets(spec: StudySpec) -> PreparedDatasets:
    """Before anything trains: prepare every folder dataset once (decode, authors' recipe, remove
    near-duplicates) and check that every finite pool holds the largest split pair. Nothing is
    written: a pool too small is a UserInputError naming it, and the caches are written by
    `PreparedDatasets.cache` once the study's other checks have passed too."""
    rows, pools = [], {}
    for dataset in spec.datasets:
        row = {"study_id": spec.name, "dataset": dataset.name, "kind": dataset.kind, "pool_images": None,
               "duplicates_removed": None, "near_duplicate_threshold": None, "pool_files_sha256": None}
        if (pool := finite_pool(dataset, spec.image_size, write_cache=False)) is not None:
            pools[dataset.name] = pool
            row.update(pool_images=len(pool), duplicates_removed=pool.duplicates_removed,
                       # of a folder's files (the photos' tiles, bundled, have none)
                       pool_files_sha256=hashlib.sha256("\n".join(pool.files).encode()).hexdigest()
                       if pool.files else None,
                       # a folder's own threshold (None: duplicates kept), else the photos' one
                       near_duplicate_threshold=dataset.params.get("near_duplicate_threshold",
                                                                   NEAR_DUPLICATE_THRESHOLD))
        needed = pool_size_needed(max(spec.train_sizes), spec.test_images)
        if row["pool_images"] is not None and row["pool_images"] < needed:
            removed = (f" after removing {row['duplicates_removed']:,} near-duplicates" if row["duplicates_removed"]
                       else "")
            raise UserInputError(f"datasets[{spec.datasets.index(dataset)}] ({dataset.name!r}): the pool holds "
                                 f"{row['pool_images']:,} images{removed}, but N = {max(spec.train_sizes):,} needs "
                                 f"2 x N + test_images = {needed:,} (two disjoint splits and the held-out set)")
        rows.append(row)
    return PreparedDatasets(rows, pools)


def split_images(dataset: DatasetSpec, size: int, n: int | dict[str, int], n_test: int, pair: int,
                 parts: tuple[str, ...] = ("A", "B", "test"), keep_uint8: bool = False,
                 prepared: dict[str, dict] | None = None) -> dict[str, Tensor]:
    """The images of split pair `pair` of a spec's dataset (`gahb_scale.dataset_kinds.split_pair_images`),
    a folder's read from the pool the run prepared (`prepared`: `PreparedDatasets.cache`) where given."""
    pool = None
    if dataset.name in (prepared or {}):
        cache = prepared[dataset.name]["cache"]
        try:
            pool = read_prepared_folder(cache)
        except FileNotFoundError:
            raise UserInputError(f"dataset {dataset.name!r}: its prepared images {cache} are not on "
                                 f"node {socket.gethostname()}: cache_dir must be a folder every node reads at the "
                                 f"same path (a shared volume)") from None
    return split_pair_images(dataset.kind, dataset.params, size, n, n_test, pair, parts, keep_uint8,
                             dataset.pixel_shuffle_seed, pool)

