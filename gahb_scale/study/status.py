"""A study's state in its store — which models are trained, analysed, which pairs compared — worked
out once, by `run` and by `gahb-scale status` alike; and the status report (which models are
trained, part-trained or missing, and which analysed)."""

from __future__ import annotations

import io
import json
from collections import defaultdict
from dataclasses import dataclass

import pyarrow.fs as pafs

from .spec import StudySpec
from .store import CHECKPOINT_STEP_FILE, STATE_FILE, StudyStore, StudyTables, spec_path
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

    @property
    def by_pair(self) -> dict[str, dict[str, Trial]]:
        """pair id -> {"A": trial, "B": trial}."""
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


def _checkpoint_step(store: StudyStore, pack_id: str) -> int | None:
    """Step of the newest Ray Train checkpoint of a pack, if any."""
    folder = store.path(f"ray/{pack_id}")
    infos = store.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    checkpoints = sorted(i.path for i in infos if i.type == pafs.FileType.Directory and
                         i.base_name.startswith("checkpoint_"))
    if not checkpoints:
        return None
    if store.fs.get_file_info(step_file := f"{checkpoints[-1]}/{CHECKPOINT_STEP_FILE}").type == pafs.FileType.File:
        with store.fs.open_input_stream(step_file) as f:
            return int(f.read())
    import torch  # a checkpoint of version 0.4 and earlier has its step only inside the pack's state

    with store.fs.open_input_stream(f"{checkpoints[-1]}/{STATE_FILE}") as f:
        return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=False)["step"]


def _checkpoint_steps(store: StudyStore, trial_ids: set[str]) -> dict[str, int]:
    """trial id -> the furthest checkpoint step of any pack holding it (packs listed under packs/)."""
    steps: dict[str, int] = {}
    for info in store.fs.get_file_info(pafs.FileSelector(store.path("packs"), allow_not_found=True)):
        if not info.base_name.endswith(".json"):
            continue
        with store.fs.open_input_stream(info.path) as f:
            members = set(json.loads(f.read())) & trial_ids
        if members and (step := _checkpoint_step(store, info.base_name.removesuffix(".json"))) is not None:
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


def study_status(spec: StudySpec) -> str:
    store = StudyStore(spec.storage.results_location())
    state = study_state(spec, store, StudyTables(store, spec.name))
    trials, trained, analysed = state.trials, state.trained, state.analysed
    counts = {"trained": 0, "part-trained": 0, "not started": 0}
    lines = []
    checkpointed = _checkpoint_steps(store, {t.trial_id for t in trials} - trained)
    for trial in trials:
        if trial.trial_id in trained:
            state_of, detail = "trained", "trained"
        elif (step := checkpointed.get(trial.trial_id)) is not None:
            state_of, detail = "part-trained", f"part-trained (checkpoint at step {step}/{spec.training.steps_for(trial.n)})"
        else:
            state_of, detail = "not started", "not started"
        counts[state_of] += 1
        lines.append(f"{trial.trial_id}  {trial.dataset.name}/{trial.architecture.name} N={trial.n} pair={trial.pair} "
                     f"{trial.split} seed={trial.seed}: {detail}; "
                     f"{'analysed' if trial.trial_id in analysed else 'not analysed'}")
    pairs = state.by_pair
    summary = (f"study {spec.name} ({store.results}): {len(trials)} models — {counts['trained']} trained, "
               f"{counts['part-trained']} part-trained (resume with `gahb-scale run`), {counts['not started']} not "
               f"started; {len(analysed)} analysed; {len(state.compared)}/{len(pairs)} split pairs compared; "
               f"transition table {'written' if store.table_keys('transition', spec.name) else 'not written'}")
    return "\n".join([summary, ""] + lines)
