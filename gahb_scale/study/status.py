"""`gahb-scale status`: which models are trained, part-trained or missing, and which analysed."""

from __future__ import annotations

import io
import json

import pyarrow.fs as pafs

from .spec import StudySpec
from .store import CHECKPOINT_STEP_FILE, STATE_FILE, StudyStore, model_path, spec_path
from .trials import analysis_id, expand_trials


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
    trials = expand_trials(spec)
    analysis_key = analysis_id(spec)
    analysed = store.keys_present("model_metrics", "trial_id", {"study_id": spec.name, "analysis_id": analysis_key})
    compared = store.keys_present("pairs", "pair_id", {"study_id": spec.name, "analysis_id": analysis_key})
    counts = {"trained": 0, "part-trained": 0, "not started": 0}
    lines = []
    trained = {t.trial_id for t in trials if store.exists(model_path(t.trial_id))}
    checkpointed = _checkpoint_steps(store, {t.trial_id for t in trials} - trained)
    for trial in trials:
        if trial.trial_id in trained:
            state, detail = "trained", "trained"
        elif (step := checkpointed.get(trial.trial_id)) is not None:
            state, detail = "part-trained", f"part-trained (checkpoint at step {step}/{spec.training.steps_for(trial.n)})"
        else:
            state, detail = "not started", "not started"
        counts[state] += 1
        lines.append(f"{trial.trial_id}  {trial.dataset.name}/{trial.architecture.name} N={trial.n} pair={trial.pair} "
                     f"{trial.split} seed={trial.seed}: {detail}; "
                     f"{'analysed' if trial.trial_id in analysed else 'not analysed'}")
    pairs = {t.pair_id for t in trials}
    summary = (f"study {spec.name} ({store.results}): {len(trials)} models — {counts['trained']} trained, "
               f"{counts['part-trained']} part-trained (resume with `gahb-scale run`), {counts['not started']} not "
               f"started; {len(analysed & {t.trial_id for t in trials})} analysed; "
               f"{len(compared & pairs)}/{len(pairs)} split pairs compared; transition table "
               f"{'written' if store.keys_present('transition', 'study_id') & {spec.name} else 'not written'}")
    return "\n".join([summary, ""] + lines)
