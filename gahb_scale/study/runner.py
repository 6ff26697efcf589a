"""Run a study end to end, one module per stage in the order data flows: prepare (driver) → train
(Ray Train, packs) → analyse each model → compare each pair → summarise the study (Ray tasks) →
report → track (MLflow; the driver).

Every stage skips what is already done, judged from the store: a model file per trained trial,
rows tagged with the analysis settings' id per analysed model and pair. So re-running a finished
study trains and writes nothing, and a study stopped at any point continues where it was.
The driver is the only writer of the Parquet tables and of MLflow; tasks leave model files,
arrays and figures in the store.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import socket
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Callable

import ray
import torch

import gahb_scale

from ..errors import UserInputError, printable
from ..limits import MAX_RESULTS_PATH_LENGTH
from .analyse import analyse_model
from .compare import compare_pair
from .prepare import prepare_datasets
from .progress import StageProgress, failure_reason, log, ray_output_to
from .report import REPORT_ALWAYS, report_dir, write_report
from .spec import StudySpec
from .store import StudyStore, model_path, spec_path, training_record_path
from .summarise import summarise_study, transition_at
from .track import (ANALYSIS_FIGURES, COMPARE_FIGURES, StudyTracker, experiment_url, model_figures, store_notice,
                    track_study, ui_command)
from .trials import Trial, analysis_id, expand_trials

# Ray's environment: read by this process when ray.train is first imported (so `start_ray` sets it
# before the training stage is imported) and by every worker (the job's runtime env carries it).
RAY_ENV = {
    "RAY_TRAIN_V2_ENABLED": "1",
    # Ray's default is 60 s. A worker group may wait far longer for its place, legitimately: for
    # another trial to finish after a node was lost, or for the autoscaler. On local Ray impossible
    # requests are refused before the study starts (check_resources); on an existing cluster they
    # are only warned about, and a group that no node can hold waits until stopped.
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(24 * 3600),
}
# Seconds to wait for a cluster address to accept a connection: ray.init retries one that never
# answers forever, silently.
CONNECT_TIMEOUT_S = 10


class StudyFailed(Exception):
    """Some trials or tasks failed; what finished is saved and a re-run continues from there."""


def check_resources(spec: StudySpec, cluster: dict, strict: bool) -> None:
    """Refuse, before anything starts, a request the cluster cannot satisfy.

    On an existing cluster (`strict=False`) an autoscaler may still add nodes, so a shortfall is
    only reported; on the local Ray started here nothing will ever be added.
    """
    resources, workers = spec.resources, spec.training.workers
    cpus, gpus = cluster.get("CPU", 0), cluster.get("GPU", 0)
    need_cpus = workers * resources.cpus_per_trial
    problems = []
    if need_cpus > cpus + 1e-9:
        problems.append(f"resources.cpus_per_trial: one trial needs {need_cpus:g} CPUs ({workers} worker(s) x "
                        f"{resources.cpus_per_trial:g}) but the Ray cluster has {cpus:g}")
    if workers * resources.gpus_per_trial > gpus + 1e-9:
        problems.append(f"resources.gpus_per_trial: one trial needs {workers * resources.gpus_per_trial:g} GPUs "
                        f"but the Ray cluster has {gpus:g}")
    if problems and strict:
        raise UserInputError("\n".join(problems))
    for problem in problems:
        log.warning(f"warning: {problem} (now; waiting for the autoscaler)")


def local_resources() -> dict | None:
    """The CPUs and GPUs that `ray.init("local")` will find here, by Ray's own detection, so an
    impossible request is refused before Ray starts; None where that detection is unavailable
    (the check after Ray starts still holds)."""
    try:
        from ray._private import accelerators
        from ray._private.utils import get_num_cpus
        gpus = accelerators.get_accelerator_manager_for_resource("GPU")
        visible = gpus.get_current_process_visible_accelerator_ids()
        return {"CPU": get_num_cpus(),
                "GPU": len(visible) if visible is not None else gpus.get_current_node_num_accelerators()}
    except (ImportError, AttributeError):
        return None


def check_address(address: str | None) -> None:
    """An address of an existing cluster must accept a connection within CONNECT_TIMEOUT_S;
    "auto" and None (a local Ray) are not probed."""
    if address is None or address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 2**16:
        raise UserInputError(f"--address {printable(address)}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise UserInputError(f"no Ray cluster at {printable(address)} ({exc or 'no answer'}; waited at most "
                             f"{CONNECT_TIMEOUT_S} s)") from None


def check_results_location(results: str) -> None:
    """A local results folder that could not hold the study's files is refused before anything
    is written: a path too long, or something in the way that is not a writable folder."""
    if "://" in results:
        return
    path = Path(results)
    if len(os.fsencode(results)) > MAX_RESULTS_PATH_LENGTH:
        raise UserInputError(f"results location (--results or storage.results_dir): {len(os.fsencode(results)):,} "
                             f"bytes long, more than {MAX_RESULTS_PATH_LENGTH}; too long for the files a study writes "
                             f"below it")
    where = f"results location {printable(results)} (--results or storage.results_dir)"
    if any(len(os.fsencode(part)) > 255 for part in path.parts):
        raise UserInputError(f"{where}: a folder name is longer than 255 bytes")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UserInputError(f"{where}: {printable(str(existing))} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserInputError(f"{where}: {printable(str(existing))} is not writable")


def start_ray(address: str | None, verbose: bool = False) -> None:
    """Join the cluster at `address`, or start a local Ray (None), with RAY_ENV set for the driver
    and every worker; the workers' output reaches this terminal only if `verbose`."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    # Object-store credentials are not put in here: Ray writes a job's runtime env into its logs on
    # every node. Each node reads the store with its own (AWS_* variables or an instance role).
    runtime_env = {"env_vars": dict(RAY_ENV)}
    if address:  # ship this version of the package to the cluster's workers
        runtime_env["py_modules"] = [str(Path(gahb_scale.__file__).parent)]
    # Ctrl-C is the study's to handle (exit 130, "interrupted"): Tune's own handler would end
    # training quietly, and the study would then report its models as failed.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # "local", not None: None would join any Ray that `ray start` left running on this machine
    try:
        ray.init(address=address or "local", runtime_env=runtime_env, include_dashboard=False,
                 log_to_driver=verbose, configure_logging=False)
    except ConnectionError as exc:
        raise UserInputError(f"no Ray cluster at {printable(address or 'local')}: {exc}") from None


class _Buffered:
    """Rows collected from tasks and written to their tables in batches (one writer per table)."""

    def __init__(self, store: StudyStore):
        self.store, self.rows = store, defaultdict(list)

    def add(self, tables: dict[str, list[dict]]) -> None:
        for name, rows in tables.items():
            self.rows[name] += rows

    def flush(self) -> None:
        # The stage markers last: model_metrics rows mark a model analysed and pairs rows a pair
        # compared, so a kill between two writes never leaves a marker without the rows it vouches for.
        for name in sorted(self.rows, key=lambda n: n in ("model_metrics", "pairs")):
            self.store.upsert(name, self.rows[name])
        self.rows.clear()


def _gather(refs: dict, what: str, buffer: _Buffered, on_done: Callable[[object, dict], None],
            on_failed: Callable[[object, str], None], flush_every: float = 20.0) -> list:
    """Wait for Ray tasks, buffering each one's rows as they arrive and handing them to `on_done`
    (key, tables), or the one-line reason to `on_failed` (key, reason); returns the keys that failed."""
    failed, last_flush = [], time.monotonic()
    pending = dict(refs)
    progress = StageProgress(what, len(refs), "task")
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        key = pending.pop(ready[0])
        try:
            tables = ray.get(ready[0])
        except Exception as exc:  # a failed task must not lose the others' results
            failed.append(key)
            reason = failure_reason(exc)
            log.info(f"[{what}] FAILED {key}: {reason}")
            on_failed(key, f"{what}: {reason}")
        else:
            buffer.add(tables)
            on_done(key, tables)
        progress.update()
        if time.monotonic() - last_flush > flush_every:
            buffer.flush()
            last_flush = time.monotonic()
    progress.close()
    buffer.flush()
    return failed


def _replace_study_rows(store: StudyStore, spec: StudySpec, name: str, rows: list[dict]) -> bool:
    """Write a study-level table only if its rows changed (a finished study's re-run rewrites
    nothing); returns whether it wrote."""
    old = [r for r in store.rows(name) if r["study_id"] == spec.name]
    canonical = lambda rs: repr([sorted(r.items()) for r in rs])  # noqa: E731 - repr: NaN != NaN
    if not rows or canonical(old) == canonical(rows):
        return False
    store.upsert(name, rows)
    return True


def _training_record(store: StudyStore, trial_id: str) -> dict:
    """How a model was trained (its `training.json`). A model file of version 0.4 and earlier held
    that record beside its weights: it is copied out once, so results folders shared with models of
    an earlier version keep working."""
    path = training_record_path(trial_id)
    if not store.exists(path):
        try:
            saved = torch.load(io.BytesIO(store.read_bytes(model_path(trial_id))), map_location="cpu",
                               weights_only=False)
        except (pickle.UnpicklingError, EOFError, RuntimeError):
            saved = None
        if not isinstance(saved, dict) or "losses" not in saved:
            raise UserInputError(f"{store.uri(model_path(trial_id))} has no training record beside it and holds none "
                                 f"itself: delete its folder to train that model again")
        record = {key: saved[key] for key in ("losses", "steps", "resumed_from", "train_seconds", "device",
                                              "workers", "num_parameters")}
        store.write_bytes(path, json.dumps({**record, "pack_id": saved.get("pack_id", trial_id),
                                            "pack_size": saved.get("pack_size", 1)}).encode())
    return json.loads(store.read_bytes(path))


def _register_trained(spec: StudySpec, trials: list[Trial], store: StudyStore) -> None:
    registered = store.keys_present("trials", "trial_id", {"study_id": spec.name})
    rows, curves = [], []
    for trial in trials:
        if trial.trial_id in registered or not store.exists(model_path(trial.trial_id)):
            continue
        record = _training_record(store, trial.trial_id)
        rows.append({**trial.as_row(), "steps": record["steps"], "final_loss": record["losses"][-1][1],
                     "num_parameters": record["num_parameters"], "train_seconds": record["train_seconds"],
                     "resumed_from_step": record["resumed_from"], "device": record["device"],
                     # relative to the results folder, so the folder can move
                     "workers": record["workers"], "model_path": model_path(trial.trial_id),
                     # train_seconds is the pack's: its models trained in the same steps, so each
                     # model's share is the pack's time over its models
                     "model_train_seconds": record["train_seconds"] / record["pack_size"],
                     "pack_id": record["pack_id"], "pack_size": record["pack_size"]})
        curves += [{"study_id": spec.name, "trial_id": trial.trial_id, "step": step, "loss": loss}
                   for step, loss in record["losses"]]
    store.upsert("train_curves", curves)
    store.upsert("trials", rows)


def has_saved_work(spec: StudySpec) -> bool:
    """Whether a run of this study got past its checks (now or before), so an interrupted run
    leaves work that the same command continues from."""
    try:
        return StudyStore(spec.storage.results_location()).exists(spec_path(spec.name))
    except (OSError, UserInputError):
        return False


def ray_log_path(spec: StudySpec, store: StudyStore) -> Path:
    """Where a run keeps Ray's own output: beside local results, else in this machine's home folder."""
    folder = Path(store.path("logs")) if "://" not in store.results else Path.home() / ".gahb-scale" / "logs"
    return folder / f"{spec.name}-{datetime.now():%Y%m%d-%H%M%S}.log"


def run_study(spec: StudySpec, spec_text: str, address: str | None = None, verbose: bool = False) -> dict:
    """Run (or continue) a study. Returns {"transition": rows, "mlflow_uri": ..., "mlflow_url": ..., "results": ...,
    "tables": ..., "report": ...}. Ray's own output goes to a log file unless `verbose`."""
    store = StudyStore(spec.storage.results_location())
    started = time.monotonic()
    log.info(f"study {spec.name}: {len(expand_trials(spec))} models; results in {store.results}")
    if notice := store_notice(spec, store):
        log.info(notice)
    # Everything that can be known before Ray starts is checked first, and nothing is written
    # until every check has passed: a refused study leaves no trace.
    check_address(address)
    check_results_location(store.results)
    if address is None and (local := local_resources()) is not None:
        check_resources(spec, local, strict=True)
    datasets = prepare_datasets(spec)  # a bad folder or a pool too small fails here; caches written below
    for row in datasets.rows:
        if row["duplicates_removed"] is not None:
            log.info(f"[prepare] {row['dataset']}: {row['pool_images']} images after removing "
                     f"{row['duplicates_removed']} near-duplicates (|correlation| > "
                     f"{row['near_duplicate_threshold']:g} on copies pooled by int(side/20))")
    log_path = None if verbose else ray_log_path(spec, store)
    if log_path is not None:
        log.info(f"Ray's own output: {log_path} (run --verbose shows it here)")
    tracker, status = None, "FAILED"
    with ray_output_to(log_path):
        try:
            start_ray(address, verbose)
            try:
                check_resources(spec, ray.cluster_resources(), strict=address is None)
                datasets.cache()
                store.write_bytes(spec_path(spec.name), spec_text.encode())  # several studies may share a folder
                tracker = StudyTracker(spec, store)
                tracker.start(spec_text)
                log.info(f"[mlflow] {experiment_url(tracker.uri, tracker.experiment_id)}  ({ui_command(tracker.uri)})")
                _replace_study_rows(store, spec, "datasets", datasets.rows)
                outcome = _run_stages(spec, store, tracker, address, verbose)
            finally:
                ray.shutdown()
            outcome.update(_report(spec, store, tracker, outcome))
            status = "FINISHED" if not outcome["failed"] and outcome["complete"] else "FAILED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if tracker is not None:
                tracker.finish(status)
    log.info(f"study {spec.name}: finished stages in {time.monotonic() - started:.0f} s")
    failed = outcome["failed"]
    if status != "FINISHED":
        raise StudyFailed(f"{len(failed)} trial(s)/task(s) failed ({', '.join(map(str, failed[:5]))}); finished "
                          f"work is saved — fix the cause and run the same command again to continue")
    return {"transition": outcome["transition"], "mlflow_uri": tracker.uri,
            "mlflow_url": experiment_url(tracker.uri, tracker.experiment_id), "results": store.results,
            "tables": store.uri("tables/"), "report": outcome["report"]}


def _run_stages(spec: StudySpec, store: StudyStore, tracker: StudyTracker, address: str | None,
                verbose: bool) -> dict:
    """Stages 1-4 on Ray, each model's and N's results logged to MLflow as they come."""
    from .train import train_study  # only now: ray.train reads RAY_ENV when first imported in a process

    trials = expand_trials(spec)
    by_id = {trial.trial_id: trial for trial in trials}
    analysis_key = analysis_id(spec)
    resources = spec.resources

    # 1. training (Tune grid of TorchTrainers, one per pack)
    if any(not store.exists(model_path(trial.trial_id)) for trial in trials):
        failed = train_study(spec, store, fixed_cluster=address is None, tracker=tracker, verbose=verbose)
    else:
        failed = []
        log.info(f"[train] all {len(trials)} models already trained")
    _register_trained(spec, trials, store)
    trained = [trial for trial in trials if store.exists(model_path(trial.trial_id))]
    for trial in trained:  # a run made or streamed before a killed driver: its saved curve fills the gaps
        if not tracker.trial_logged(trial, analysis_key):
            tracker.fill_losses(trial, [(row["step"], row["loss"])
                                        for row in store.key_rows("train_curves", spec.name, trial.trial_id)])

    # 2. per model: samples, PSNR curves, memorization, Jacobian spectra
    analysed = store.keys_present("model_metrics", "trial_id", {"study_id": spec.name, "analysis_id": analysis_key})
    pending = [trial for trial in trained if trial.trial_id not in analysed]
    buffer = _Buffered(store)

    def analysis_done(trial_id: str, tables: dict) -> None:
        trial = by_id[trial_id]
        tracker.log_analysis(trial, tables["model_metrics"][0], model_figures(store, spec, trial, ANALYSIS_FIGURES))

    if pending:
        task = ray.remote(analyse_model).options(num_cpus=resources.cpus_per_trial,
                                                 num_gpus=resources.gpus_per_trial,
                                                 max_retries=resources.max_failures)
        refs = {task.remote(spec, trial, store.results, analysis_key): trial.trial_id for trial in pending}
        log.info(f"[analysis] {len(pending)} models to analyse")
        failed_now = _gather(refs, "analysis", buffer, analysis_done,
                             lambda trial_id, reason: tracker.model_failed(by_id[trial_id], reason))
        analysed |= set(refs.values()) - set(failed_now)
        failed += failed_now
    else:
        log.info(f"[analysis] all {len(trained)} models already analysed")

    # 3. per split pair: A/B similarity of samples with shared seeds
    compared = store.keys_present("pairs", "pair_id", {"study_id": spec.name, "analysis_id": analysis_key})
    by_pair = defaultdict(dict)
    for trial in trials:
        by_pair[trial.pair_id][trial.split] = trial
    ready = [(pair["A"], pair["B"]) for pair_id, pair in by_pair.items()
             if pair_id not in compared and pair["A"].trial_id in analysed and pair["B"].trial_id in analysed]
    pairs_left = defaultdict(set)  # per N, its pairs not compared yet
    for trial_a, _ in ready:
        pairs_left[trial_a.n].add(trial_a.pair_id)

    def pair_done(pair_id: str, tables: dict) -> None:
        for trial in by_pair[pair_id].values():
            tracker.log_compared(trial, analysis_key, model_figures(store, spec, trial, COMPARE_FIGURES))
        n = by_pair[pair_id]["A"].n
        pairs_left[n].discard(pair_id)
        if not pairs_left[n]:  # the transition curve gets this N's point now
            buffer.flush()
            tracker.log_transition(transition_at(spec, store.results, n))

    def pair_failed(pair_id: str, reason: str) -> None:
        for trial in by_pair[pair_id].values():
            tracker.model_failed(trial, reason)

    if ready:
        task = ray.remote(compare_pair).options(num_cpus=min(1.0, resources.cpus_per_trial),
                                                max_retries=resources.max_failures)
        refs = {task.remote(spec, trial_a, trial_b, store.results, analysis_key): trial_a.pair_id
                for trial_a, trial_b in ready}
        failed_now = _gather(refs, "pairs", buffer, pair_done, pair_failed)
        compared |= set(refs.values()) - set(failed_now)
        failed += failed_now
    else:
        log.info("[pairs] nothing new to compare")

    # 4. per study: transition, slopes, shuffle drop, memorization over time
    tables = ray.get(ray.remote(summarise_study).options(num_cpus=0, max_retries=resources.max_failures)
                     .remote(spec, store.results))
    changed = [name for name, rows in tables.items() if _replace_study_rows(store, spec, name, rows)]
    return {"trials": trials, "failed": failed, "complete": all(trial.trial_id in analysed for trial in trials),
            "analysed": analysed, "compared": compared, "by_pair": by_pair, "changed": changed,
            "transition": tables["transition"], "analysis_key": analysis_key}


def _report(spec: StudySpec, store: StudyStore, tracker: StudyTracker, outcome: dict) -> dict:
    """Stage 5: the report, once both models of a pair are analysed (rebuilt only when a table
    changed), then what MLflow still lacks: the models whose pair is compared (each run complete,
    its sample figure drawn by the compare stage) and the study run's results and report."""
    by_pair, analysed = outcome["by_pair"], outcome["analysed"]
    reported = [trial for trial in outcome["trials"]
                if all(member.trial_id in analysed for member in by_pair[trial.pair_id].values())]
    if not reported:
        return {"report": None}
    stale = outcome["changed"] or not all(store.exists(f"{report_dir(spec)}/{name}") for name in REPORT_ALWAYS)
    report_files = write_report(spec, store) if stale else None
    tracked = [trial for trial in reported if trial.pair_id in outcome["compared"]]
    track_study(tracker, tracked, store, outcome["analysis_key"], outcome["transition"], report_files)
    report = store.uri(f"{report_dir(spec)}/index.html")
    log.info(f"[report] {report}")
    return {"report": report}
