"""A study's state in its store — which models are trained, analysed, which pairs compared — worked
out once, by `run` and by `gahb-scale status` alike; and what the status report adds (which models
are part-trained, whether the transition table is written); and the run marker, which a run holds
and both read to say whether a run is going on."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from ..design.spec import StudySpec
from ..design.trials import Trial, analysis_id, expand_trials
from ..errors import UserInputError
from .store import (StudyStore, StudyTables, pack_path, pack_run_dir, pool_path, report_stamp_path, run_marker_path,
                    spec_path)

if TYPE_CHECKING:  # the datasets import torch, which `status` does not need
    from ..design.datasets import PreparedDatasets


@dataclass
class StudyState:
    """What is done of a study's models and pairs (trial and pair ids), as the store holds it."""
    trials: list[Trial]
    analysis_key: str
    trained: set[str]  # a model file: the mark of a trained model
    registered: set[str]  # a row in the trials table
    analysed: set[str]  # model_metrics rows of these analysis settings
    compared: set[str]  # pairs rows of these analysis settings
    others: set[str]  # models in the trials table that the spec no longer names (other settings, N, ...)

    @cached_property
    def by_pair(self) -> dict[str, dict[str, Trial]]:
        """pair id -> {"A": trial, "B": trial}; made once, as the report stage asks it once per model."""
        pairs = defaultdict(dict)
        for trial in self.trials:
            pairs[trial.pair_id][trial.split] = trial
        return pairs

    def stamp(self) -> bytes:
        """What the study tables and report are made from: they are made again when it changes."""
        return json.dumps({"analysis_id": self.analysis_key, "analysed": sorted(self.analysed),
                           "compared": sorted(self.compared)}).encode()


def others_note(state: StudyState) -> str:
    """What a reader of the tables must know when they hold models the spec no longer names."""
    return (f"the study's tables also hold {len(state.others)} model(s) its spec no longer names (other training "
            f"settings, an N, seed or dataset taken out, or an image folder at another path: a relative path resolves "
            f"against the current directory): kept, and left out of its transition table, report "
            f"and MLflow results; a query leaves them out with JOIN spec_models (docs/tables.md)")


# A run rewrites its marker this often; a marker not rewritten for MARKER_STALE seconds is a run
# that died with no clean-up (on another machine its process cannot be looked up; on this one its
# process id may have been given to another process since).
MARKER_BEAT, MARKER_STALE = 60.0, 600.0


def refuse_while_running(store: StudyStore, study: str, then: str) -> None:
    """A UserInputError naming the run of the study going on now, if any; `then`: what to do."""
    if (run := running(store, study)) is not None:
        raise UserInputError(f"study {study} is being run now, by process {run['pid']} on {run['host']} since "
                             f"{run['started']}: {then}")


def running(store: StudyStore, study: str) -> dict | None:
    """The run of the study going on now, by its marker: {"host", "pid", "started", ...}; None where
    there is none, or where it ended with no clean-up: its marker went unrewritten for MARKER_STALE
    seconds, or (on this machine) its process is gone."""
    try:
        run = json.loads(store.read_bytes(run_marker_path(study)))
        pid, beat = int(run["pid"]), float(run["beat"])
        if not (isinstance(run["host"], str) and isinstance(run["started"], str) and 0 < pid < 2**31):
            return None
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    if time.time() - beat >= MARKER_STALE:
        return None
    if run["host"] == socket.gethostname():
        if pid == os.getpid():  # a marker left by a run whose process id this one has now
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # another user's process: alive
            pass
    return run


@contextmanager
def marked_running(store: StudyStore, study: str):
    """While inside, the study's run marker names this process (`running` reads it), and is
    rewritten every MARKER_BEAT seconds: a marker left unrewritten is a run that died."""
    marker, stop = run_marker_path(study), threading.Event()
    run = {"host": socket.gethostname(), "pid": os.getpid(), "started": f"{datetime.now():%Y-%m-%d %H:%M:%S}",
           "token": uuid.uuid4().hex}

    def beat(atomic: bool = True) -> None:
        store.write_bytes(marker, json.dumps({**run, "beat": time.time()}).encode(), atomic=atomic)

    def keep_beating() -> None:
        while not stop.wait(MARKER_BEAT):
            try:
                beat()
            except OSError:  # the store did not answer this once: the next beat tries again
                pass

    beat(atomic=False)  # a first marker read half-written is taken for none
    beating = threading.Thread(target=keep_beating, name="run-marker", daemon=True)
    beating.start()
    try:
        yield
    finally:
        stop.set()
        beating.join()
        # only its own marker (a user may have deleted it, and another run written its own), and
        # quietly: a marker left behind goes stale, a run's outcome must not change for it
        try:
            if json.loads(store.read_bytes(marker)).get("token") == run["token"]:
                store.fs.delete_file(store.path(marker))
        except (OSError, ValueError, AttributeError):
            pass


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
    ids, listed = {trial.trial_id for trial in trials}, set(store.table_keys("trials", spec.name))
    return StudyState(trials, key, trained_models(store) & ids, listed & ids,
                      _keys_with(tables, "model_metrics", ids, key),
                      _keys_with(tables, "pairs", {trial.pair_id for trial in trials}, key), listed - ids)


def resume_step(store: StudyStore, pack_id: str) -> int | None:
    """The step a pack resumes from: that of the last checkpoint Ray Train registered in its run's
    snapshot (a newer checkpoint folder may be one it never registered, which it will not use);
    None for none, or a snapshot this version cannot read."""
    try:
        snapshot = json.loads(store.read_bytes(f"{pack_run_dir(pack_id)}/checkpoint_manager_snapshot.json"))
        return int(snapshot["latest_checkpoint_result"]["metrics"]["step"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def recorded_packs(store: StudyStore, trial_ids: set[str], trained: set[str]) -> tuple[dict[str, list[str]], list[str]]:
    """The packs recorded under packs/ of the study's models (`trial_ids`): those a run resumes
    (pack id -> its trial ids, some not `trained`), and those whose models are all trained. A pack
    holding models the spec does not name is left alone: another study sharing the folder may be
    training it now, and this study packs its own models anew. Of packs that share a model not yet
    trained (one begun while the spec named fewer models, beside the pack it left), the one holding
    the most training (steps × models not yet trained) is resumed: both would train that model, each
    saving it; the other is left, and dropped once its models are all trained."""
    candidates, ended = {}, []
    for file in store.files_below("packs", recursive=False):
        pack_id = file.removesuffix(".json")
        members = json.loads(store.read_bytes(pack_path(pack_id)))
        if set(members) <= trial_ids:
            if set(members) <= trained:
                ended.append(pack_id)
            else:
                candidates[pack_id] = members
    untrained = {pack_id: set(members) - trained for pack_id, members in candidates.items()}
    counts = Counter(trial_id for members in untrained.values() for trial_id in members)
    if max(counts.values(), default=0) < 2:
        return candidates, ended
    done = {pack_id: (resume_step(store, pack_id) or 0) * len(members) for pack_id, members in untrained.items()}
    resumed, held = {}, set()
    for pack_id in sorted(candidates, key=lambda p: (-done[p], p)):
        if held.isdisjoint(untrained[pack_id]):
            resumed[pack_id] = candidates[pack_id]
            held.update(untrained[pack_id])
    return resumed, ended


def checkpoint_steps(store: StudyStore, trial_ids: set[str], trained: set[str]) -> dict[str, int]:
    """trial id -> the step its pack resumes from, for the models of `trial_ids` not `trained` that have one."""
    steps: dict[str, int] = {}
    for pack_id, members in recorded_packs(store, trial_ids, trained)[0].items():
        if (step := resume_step(store, pack_id)) is not None:
            steps.update(dict.fromkeys(set(members) - trained, step))
    return steps


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


def study_progress(spec: StudySpec) -> tuple[StudyState, dict[str, int], str, dict | None]:
    """What `gahb-scale status` reports: the study's state, the step each model not trained resumes
    from (a part-trained one), whether the study tables and report are written, up to date, and the
    run going on now, if any."""
    store = StudyStore(spec.storage.results_location())
    state = study_state(spec, store, StudyTables(store, spec.name))
    made = store.read_if_present(report_stamp_path(spec.name))
    written = ("not written" if made is None else
               "written, of other models or settings: `gahb-scale run` makes them again" if made != state.stamp() else
               "written, up to date" if len(state.compared) == len(state.by_pair) else
               f"written, of the {len(state.compared)} split pair(s) compared so far")
    return (state, checkpoint_steps(store, {t.trial_id for t in state.trials}, state.trained), written,
            running(store, spec.name))
