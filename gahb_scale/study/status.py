"""A study's state in its store — which models are trained, analysed, which pairs compared — worked
out once, by `run` and by `gahb-scale status` alike; and what the status report adds (which models
are part-trained, whether the transition table is written)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property

import pyarrow.fs as pafs

from .spec import StudySpec
from .store import CHECKPOINT_STEP_FILE, StudyStore, StudyTables, pack_path, pack_run_dir, spec_path
from .trials import Trial, analysis_id, expand_trials


@dataclass
class StudyState:
    """What is done of a study's models and pairs (trial and pair ids), as the store holds it."""
    trials: list[Trial]
    analysis_key: str
    trained: set[str]  # a model file: the mark of a trained model
    registered: set[str]  # a row in the trials table
    analysed: set[str]  # model_metrics rows of these analysis settings
    compared: set[str]  # pairs rows of these analysis settings

    @cached_property
    def by_pair(self) -> dict[str, dict[str, Trial]]:
        """pair id -> {"A": trial, "B": trial}; made once, as the report stage asks it once per model."""
        pairs = defaultdict(dict)
        for trial in self.trials:
            pairs[trial.pair_id][trial.split] = trial
        return pairs


def trained_models(store: StudyStore) -> set[str]:
    """The trial ids with a model file, by one listing of the models' folder."""
    return {file.split("/", 1)[0] for file in store.files_below("models") if file.endswith("/model.pt")}


def _keys_with(tables: StudyTables, name: str, keys: set[str], analysis_key: str) -> set[str]:
    """Those of `keys` whose rows in table `name` carry the analysis settings' id: one listing, and
    one read per file (kept for the stages that read the table next)."""
    done = set()
    for key in set(tables.store.table_keys(name, tables.study_id)) & keys:
        table = tables.key_table(name, key)
        if table is not None and "analysis_id" in table.column_names and analysis_key in table["analysis_id"].to_pylist():
            done.add(key)
    return done


def study_state(spec: StudySpec, store: StudyStore, tables: StudyTables) -> StudyState:
    """The study's state: a listing of the models, and of the trials, model_metrics and pairs tables."""
    trials, key = expand_trials(spec), analysis_id(spec)
    ids = {trial.trial_id for trial in trials}
    return StudyState(trials, key, trained_models(store) & ids, set(store.table_keys("trials", spec.name)) & ids,
                      _keys_with(tables, "model_metrics", ids, key),
                      _keys_with(tables, "pairs", {trial.pair_id for trial in trials}, key))


def _checkpoint_steps(store: StudyStore, trial_ids: set[str]) -> dict[str, int]:
    """trial id -> the furthest checkpoint step of any pack holding it (packs listed under packs/):
    the step file of each pack's newest Ray Train checkpoint, not its whole training state."""
    steps: dict[str, int] = {}
    for file in store.files_below("packs", recursive=False):
        pack_id = file.removesuffix(".json")
        members = set(json.loads(store.read_bytes(pack_path(pack_id)))) & trial_ids
        if not members:  # another study's pack, sharing the results folder: its run is not listed
            continue
        ray_run = pafs.FileSelector(store.path(pack_run_dir(pack_id)), allow_not_found=True)
        checkpoints = sorted(info.path for info in store.fs.get_file_info(ray_run)
                             if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"))
        if not checkpoints:
            continue
        try:  # a checkpoint still being written, or one of 0.4 (no step file): nothing to report
            with store.fs.open_input_stream(f"{checkpoints[-1]}/{CHECKPOINT_STEP_FILE}") as f:
                step = int(f.read())
        except (FileNotFoundError, ValueError):
            continue
        for trial_id in members:
            steps[trial_id] = max(step, steps.get(trial_id, 0))
    return steps


def holds_results(spec: StudySpec) -> bool:
    """Whether the study's results folder holds anything of it: the spec a run keeps there, or a
    model's folder of its grid (trained by this study or by another sharing the folder). One
    listing, not a request per model: on an object store a study of thousands of models is
    checked at once."""
    store = StudyStore(spec.storage.results_location())
    if store.exists(spec_path(spec.name)):
        return True
    models = store.fs.get_file_info(pafs.FileSelector(store.path("models"), allow_not_found=True))
    return not {info.base_name for info in models}.isdisjoint(t.trial_id for t in expand_trials(spec))


def study_progress(spec: StudySpec) -> tuple[StudyState, dict[str, int], bool]:
    """What `gahb-scale status` reports: the study's state, the step of the newest checkpoint of each
    model not trained (a part-trained one), and whether the transition table is written."""
    store = StudyStore(spec.storage.results_location())
    state = study_state(spec, store, StudyTables(store, spec.name))
    return (state, _checkpoint_steps(store, {t.trial_id for t in state.trials} - state.trained),
            bool(store.table_keys("transition", spec.name)))
