"""Stage 0, prepare: every image folder decoded by the authors' recipe and cached once per study,
before Ray starts (`prepare_datasets`); then the images a trial trains and is tested on: split A
or B of pair p, and the pair's held-out set (`split_images`, drawn as the dataset kind's record
says: `gahb_scale.dataset_kinds.split_pair_images`).
"""

from __future__ import annotations

import hashlib
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from torch import Tensor

from ..data import FolderImages, pool_size_needed
from ..data.image_folder import NEAR_DUPLICATE_THRESHOLD, cache_image_folder, read_prepared_folder
from ..dataset_kinds import DATASET_KINDS, split_pair_images
from ..errors import UserInputError
from .spec import DatasetSpec, StudySpec
from .status import StudyState
from .store import StudyStore, pool_path


def finite_pool(dataset: DatasetSpec, size: int, write_cache: bool = True) -> FolderImages | None:
    """The whole pool of a finite dataset (a folder prepared by the authors' recipe and cached under
    `params.cache_dir`, or the embedded photographs' tiles); None for a synthetic one."""
    kind = DATASET_KINDS[dataset.kind]
    if not kind.finite:
        return None
    return kind.pool(size, kind.params.model_validate(dataset.params), write_cache=write_cache)


@dataclass(frozen=True)
class PreparedDatasets:
    """The `datasets` table rows of a study, and its finite pools (dataset name -> pool) decoded but
    not yet cached."""
    rows: list[dict]
    pools: dict[str, FolderImages]

    def kept_pools(self) -> dict[str, dict]:
        """Dataset name -> the pool a folder's models begin training on, as kept beside each model
        (`pool_path`) and checked at every run (`check_pools_unchanged`)."""
        return {row["dataset"]: {key: row[key] for key in ("pool_images", "pool_files_sha256")}
                for row in self.rows if row["pool_files_sha256"] is not None}

    def cache(self) -> dict[str, str]:
        """Write the folders' caches: called once every check of the study passed. Returns dataset
        name -> its cached pool, which every task reads (`split_images`) instead of the folder: the
        pool a study records is the one its models train and are measured on, whatever happens to
        the folder while the study runs."""
        return {name: str(cache_image_folder(pool).cache_files[0]) for name, pool in self.pools.items()
                if pool.cache_files is not None}


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


def check_pools_unchanged(store: StudyStore, state: StudyState, prepared: PreparedDatasets, before: list[dict],
                          packed: set[str]) -> None:
    """A folder's pool that changed (images added, removed or renamed) under models trained, or
    begun (`packed`: in a pack with a checkpoint), on it would give other split pairs under the
    same trial ids: training would go on, or measures be taken, on other images than the model's.
    Each model is judged by the pool it began training on, kept beside it (`pool_path`), whichever
    study began it; a model begun before 0.7.16 has none, and the pool of the study's last run
    (`before`: its datasets rows) stands in."""
    begun = state.trained | packed
    for index, row in enumerate(prepared.rows):  # one row per dataset of the spec, in its order
        if row["pool_files_sha256"] is None:
            continue  # no files: generated images, the bundled photographs
        last = next((old for old in before if old["dataset"] == row["dataset"]), None)
        models = [t.trial_id for t in state.trials if t.dataset.name == row["dataset"] and t.trial_id in begun]
        with ThreadPoolExecutor(8) as pool:  # a small file each: on object storage, a request each
            kept = pool.map(lambda trial_id: store.read_if_present(pool_path(trial_id)), models)
        then = [json.loads(record) if record is not None else last for record in kept]
        # (a datasets table written before the hash was recorded: the pool's size at least)
        if changed := [pool["pool_images"] for pool in then if pool is not None and (
                pool["pool_images"] != row["pool_images"] or
                pool.get("pool_files_sha256") not in (None, row["pool_files_sha256"]))]:
            raise UserInputError(
                f"datasets[{index}] ({row['dataset']!r}): the folder's images changed since {len(changed)} of the "
                f"spec's models began training on it (pool of {changed[0]:,} images then, {row['pool_images']:,} "
                f"now): its split pairs would differ from those the models were trained on. Put the folder back "
                f"as it was, or run the changed data in another results folder")


def split_images(dataset: DatasetSpec, size: int, n: int | dict[str, int], n_test: int, pair: int,
                 parts: tuple[str, ...] = ("A", "B", "test"), keep_uint8: bool = False,
                 prepared: dict[str, str] | None = None) -> dict[str, Tensor]:
    """The images of split pair `pair` of a spec's dataset (`gahb_scale.dataset_kinds.split_pair_images`),
    a folder's read from the pool the run prepared (`prepared`: `PreparedDatasets.cache`) where given."""
    pool = None
    if dataset.name in (prepared or {}):
        try:
            pool = read_prepared_folder(prepared[dataset.name])
        except FileNotFoundError:
            raise UserInputError(f"dataset {dataset.name!r}: its prepared images {prepared[dataset.name]} are not on "
                                 f"node {socket.gethostname()}: cache_dir must be a folder every node reads at the "
                                 f"same path (a shared volume)") from None
    return split_pair_images(dataset.kind, dataset.params, size, n, n_test, pair, parts, keep_uint8,
                             dataset.pixel_shuffle_seed, pool)

