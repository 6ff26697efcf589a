"""Run a study end to end, its stages in the order data flows: prepare (the driver;
`gahb_scale.design.datasets`) → train (Ray Train, packs; `train`) → analyse each model → compare each
pair (Ray tasks; `analyse`) → summarise the study (`summarise`) → report (`report`) → track (MLflow,
the driver; `track`).

Every stage skips what is already done, judged from the study's state in the store, worked out
once per run (`study_state`, whose fields say what marks each stage done); the study tables and
report are made again only when what they were made from changed (their stamp). So re-running a
finished study trains and tabulates nothing, and a study stopped at any point continues where it was.
Each stage hands its rows and figures on in memory (`StudyTables`), so nothing written in a run is
read back by it. The driver is the only writer of the Parquet tables and of MLflow; tasks leave
model files, arrays and figures in the store.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Callable

import ray

import gahb_scale

from ..design.datasets import prepare_datasets
from ..design.spec import StudySpec
from ..design.trials import expand_trials
from ..errors import UserInputError, printable
from ..limits import CONNECT_TIMEOUT_S, MAX_RESULTS_PATH_LENGTH
from .analyse import analyse_model, compare_pair
from .progress import StageProgress, failure_reason, log, ray_output_to
from .report import REPORT_ALWAYS, write_report
from .status import (StudyState, check_pools_unchanged, checkpoint_steps, marked_running, others_note,
                     refuse_while_running, study_state)
from .store import (STUDY_ENTRIES, StudyStore, StudyTables, read_report, report_dir, report_stamp_path,
                    run_marker_path, spec_path)
from .summarise import summarise_study, transition_at
from .track import StudyTracker, check_tracking, experiment_url, open_tracker, store_notice, track_models, ui_command

# Ray's environment: read by this process when ray.train is first imported (so `start_ray` sets it
# before the training stage is imported) and by every worker (the job's runtime env carries it).
RAY_ENV = {
    "RAY_TRAIN_V2_ENABLED": "1",
    # Ray's default is 60 s. A worker group may wait far longer for its place, legitimately: for
    # another trial to finish after a node was lost, or for the autoscaler. On local Ray impossible
    # requests are refused before the study starts (check_resources); on an existing cluster they
    # are only warned about, and a group that no node can hold waits until stopped.
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(24 * 3600),
    # Tune's own records of its trials (result.json, progress.csv, params, TensorBoard events) and
    # its periodic experiment snapshots are for a Tuner.restore this study never asks for (it
    # resumes from its own store): each is a write to the results store. The packs' checkpoints stay.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # Ray Train starts a preemption watcher per worker group (one more process per pack, polling
    # every 5 s) that only stores a node's drain notice for the training loop to read; ours never
    # reads it: a pack that loses its node resumes from its last checkpoint.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "TUNE_GLOBAL_CHECKPOINT_S": str(24 * 3600),
}


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
    is written: a path too long, something in the way that is not a writable folder, or a folder
    that holds other things and no study's results (the current folder, a home folder)."""
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
    if existing == path and (entries := sorted(os.listdir(path))) and STUDY_ENTRIES.isdisjoint(entries):
        shown = ", ".join(printable(name) for name in entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise UserInputError(f"{where}: the folder holds other files ({shown}) and no study's results; a study "
                             f"writes a dozen folders at the top of its results folder, so give it one of its own "
                             f"(new or empty)")


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
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address or "local", runtime_env=runtime_env, include_dashboard=False,
                 log_to_driver=verbose, configure_logging=False)
    except ConnectionError as exc:
        raise UserInputError(f"no Ray cluster at {printable(address or 'local')}: {exc}") from None
    finally:  # ray.init's own handler exits at once (code 15): SIGTERM is the study's to handle, as Ctrl-C is
        signal.signal(signal.SIGTERM, sigterm)


class _Buffered:
    """Rows collected from tasks and written to their tables in batches (one writer per table)."""

    def __init__(self, tables: StudyTables):
        self.tables, self.rows = tables, defaultdict(list)

    def add(self, tables: dict[str, list[dict]]) -> None:
        for name, rows in tables.items():
            self.rows[name] += rows

    def flush(self) -> None:
        # The stage markers last: model_metrics rows mark a model analysed and pairs rows a pair
        # compared, so a kill between two writes never leaves a marker without the rows it vouches for.
        for name in sorted(self.rows, key=lambda n: n in ("model_metrics", "pairs")):
            self.tables.put(name, self.rows[name])
        self.rows.clear()


def _gather(refs: dict, what: str, buffer: _Buffered, on_done: Callable[[object, dict, dict], None],
            on_failed: Callable[[object, str], None], flush_every: float = 20.0) -> list:
    """Wait for Ray tasks, each returning (tables, figures), buffering each one's rows as they
    arrive and handing them to `on_done` (key, tables, figures), or the one-line reason to
    `on_failed` (key, reason); returns the keys that failed."""
    failed, last_flush = [], time.monotonic()
    pending = dict(refs)
    progress = StageProgress(what, len(refs), "task")
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        key = pending.pop(ready[0])
        try:
            tables, pngs = ray.get(ready[0])
        except Exception as exc:  # a failed task must not lose the others' results
            failed.append(key)
            reason = failure_reason(exc)
            log.info(f"[{what}] FAILED {key}: {reason}")
            on_failed(key, f"{what}: {reason}")
        else:
            buffer.add(tables)
            on_done(key, tables, pngs)
        progress.update()
        if time.monotonic() - last_flush > flush_every:
            buffer.flush()
            last_flush = time.monotonic()
    progress.close()
    buffer.flush()
    return failed


def has_saved_work(spec: StudySpec) -> bool:
    """Whether a run of this study got past its checks (now or before), so an interrupted run
    leaves work that the same command continues from."""
    try:
        return StudyStore(spec.storage.results_location()).exists(spec_path(spec.name))
    except (OSError, UserInputError):
        return False


def run_study(spec: StudySpec, spec_text: str, address: str | None = None, verbose: bool = False) -> dict:
    """Run (or continue) a study. Returns {"transition": rows, "mlflow_uri": ..., "mlflow_url": ..., "results": ...,
    "tables": ..., "report": ...}. Ray's own output goes to a log file unless `verbose`."""
    store = StudyStore(spec.storage.results_location())
    started = time.monotonic()
    # Everything that can be known before Ray starts is checked first, and nothing is written
    # until every check has passed: a refused study leaves no trace.
    check_address(address)
    check_results_location(store.results)
    check_tracking(spec, store)
    trials = expand_trials(spec)
    log.info(f"study {spec.name}: {len(trials)} models; results folder {store.results}")
    if notice := store_notice(spec, store):
        log.info(notice)
    if address is None and (local := local_resources()) is not None:
        check_resources(spec, local, strict=True)
    # two runs would train the same models
    refuse_while_running(store, spec.name, f"let it finish or stop it (if no such run is going on, delete "
                                           f"{store.uri(run_marker_path(spec.name))})")
    datasets = prepare_datasets(spec)  # a bad folder or a pool too small fails here; caches written below
    tables = StudyTables(store, spec.name)
    state = study_state(spec, store, tables)
    if datasets.has_folders:  # a model part-trained has a checkpoint
        check_pools_unchanged(store, state, datasets, tables.key_rows("datasets", "study"),
                              set(checkpoint_steps(store, {trial.trial_id for trial in trials}, state.trained)))
    for row in datasets.rows:
        if row["duplicates_removed"] is not None:
            log.info(f"[prepare] {row['dataset']}: {row['pool_images']:,} images after removing "
                     f"{row['duplicates_removed']:,} near-duplicates (|correlation| > "
                     f"{row['near_duplicate_threshold']:g} on copies pooled by int(side/20))")
    log_path = None
    if not verbose:  # Ray's own output: beside local results, else in this machine's home folder
        folder = Path(store.path("logs")) if "://" not in store.results else Path.home() / ".gahb-scale" / "logs"
        log_path = folder / f"{spec.name}-{datetime.now():%Y%m%d-%H%M%S}.log"
        log.info(f"Ray's own output: {log_path} (run --verbose shows it here)")
    tracker, status = None, "FAILED"
    with ray_output_to(log_path), marked_running(store, spec.name):
        try:
            start_ray(address, verbose)
            try:
                check_resources(spec, ray.cluster_resources(), strict=address is None)
                prepared = datasets.cache()
                store.write_bytes(spec_path(spec.name), spec_text.encode())  # several studies may share a folder
                tracker = open_tracker(spec, store)
                tracker.start(spec_text)
                tracker.name_outside_spec({trial.trial_id for trial in trials})
                log.info(f"[mlflow] {experiment_url(tracker.uri, tracker.experiment_id)}  ({ui_command(tracker.uri)})")
                for name, rows in (("datasets", datasets.rows), ("spec_models", [t.as_row() for t in trials])):
                    if rows != tables.key_rows(name, "study"):
                        tables.put(name, rows)
                outcome = _run_stages(spec, store, tables, tracker, state, prepared, address, verbose)
            finally:
                ray.shutdown()
            outcome.update(_report(spec, store, tables, tracker, outcome))
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


def _run_stages(spec: StudySpec, store: StudyStore, tables: StudyTables, tracker: StudyTracker, state: StudyState,
                prepared: dict[str, dict], address: str | None, verbose: bool) -> dict:
    """Stages 1-4 on Ray, each model's and N's results logged to MLflow as they come; `prepared`:
    each folder's pool as this run prepared it (`PreparedDatasets.cache`), which every task reads."""
    from .train import register_trained, train_study  # only now: ray.train reads RAY_ENV when first imported

    trials, analysis_key, resources = state.trials, state.analysis_key, spec.resources
    if state.others:
        log.info(others_note(state))
    by_id = {trial.trial_id: trial for trial in trials}

    # 1. training (Tune grid of TorchTrainers, one per pack), then each trained model's rows
    failed = []
    if len(state.trained) < len(trials):
        state.trained |= train_study(spec, store, state, prepared, local_ray=address is None,
                                     tracker=tracker, verbose=verbose)
        failed = [trial.trial_id for trial in trials if trial.trial_id not in state.trained]
    else:
        log.info(f"[train] all {len(trials)} models already trained")
    register_trained(spec, tables, [trial for trial in trials
                                    if trial.trial_id in state.trained - state.registered])
    trained = [trial for trial in trials if trial.trial_id in state.trained]
    for trial in trained:  # a run made or streamed before a killed driver: its saved curve fills the gaps
        if not tracker.trial_logged(trial, analysis_key):
            tracker.fill_losses(trial, [(row["step"], row["loss"])
                                        for row in tables.key_rows("train_curves", trial.trial_id)])

    # 2. per model: samples, PSNR curves, memorization, Jacobian spectra
    analysed = state.analysed
    pending = [trial for trial in trained if trial.trial_id not in analysed]
    buffer = _Buffered(tables)

    def analysis_done(trial_id: str, rows: dict, pngs: dict) -> None:
        analysed.add(trial_id)
        tracker.log_analysis(by_id[trial_id], rows["model_metrics"][0], pngs)

    if pending:
        task = ray.remote(analyse_model).options(num_cpus=resources.cpus_per_trial, num_gpus=resources.gpus_per_trial,
                                                 max_retries=resources.max_failures)
        log.info(f"[analysis] {len(pending)} models to analyse")
        failed += _gather({task.remote(spec, trial, store.results, analysis_key, prepared): trial.trial_id
                           for trial in pending},
                          "analysis", buffer, analysis_done,
                          lambda trial_id, reason: tracker.model_failed(by_id[trial_id], reason))
    else:
        log.info(f"[analysis] all {len(trained)} models already analysed")

    # 3. per split pair: A/B similarity of samples with shared seeds
    compared, by_pair = state.compared, state.by_pair
    ready = [(pair["A"], pair["B"]) for pair_id, pair in by_pair.items()
             if pair_id not in compared and pair["A"].trial_id in analysed and pair["B"].trial_id in analysed]
    # the tables of the spec's own models: a folder also keeps those of an earlier version of the
    # spec (other settings), which this N's point must not pool with them
    current = tables.of(analysed, compared)
    pairs_left = defaultdict(set)  # per N, its pairs not compared yet
    for trial_a, _ in ready:
        pairs_left[trial_a.n].add(trial_a.pair_id)

    def pair_done(pair_id: str, rows: dict, pngs: dict) -> None:
        compared.add(pair_id)
        for trial in by_pair[pair_id].values():
            tracker.log_compared(trial, analysis_key, pngs[trial.trial_id])
        n = by_pair[pair_id]["A"].n
        pairs_left[n].discard(pair_id)
        if not pairs_left[n]:  # the transition curve gets this N's point now
            buffer.flush()
            tracker.log_transition(transition_at(spec, current, n))

    def pair_failed(pair_id: str, reason: str) -> None:
        for trial in by_pair[pair_id].values():
            tracker.model_failed(trial, reason)

    if ready:
        task = ray.remote(compare_pair).options(num_cpus=min(1.0, resources.cpus_per_trial),
                                                max_retries=resources.max_failures)
        failed += _gather({task.remote(spec, trial_a, trial_b, store.results, analysis_key): trial_a.pair_id
                           for trial_a, trial_b in ready}, "pairs", buffer, pair_done, pair_failed)
    else:
        log.info("[pairs] nothing new to compare")
    return {"state": state, "failed": failed, "complete": all(trial.trial_id in analysed for trial in trials)}


def _tables_and_report(spec: StudySpec, store: StudyStore, tables: StudyTables, state: StudyState,
                       with_report: bool = True) -> dict[str, bytes] | None:
    """The study tables, summarised from the spec's own analysed models and compared pairs, and
    (`with_report`) the report's files, written with the stamp that says what they are made from."""
    current = tables.of(state.analysed, state.compared)
    for name, rows in summarise_study(spec, current).items():
        tables.put(name, rows)
    if not with_report:
        return None
    files = write_report(spec, store, current)
    store.write_bytes(report_stamp_path(spec.name), state.stamp())  # last: the tables and report are whole
    return files


def _report(spec: StudySpec, store: StudyStore, tables: StudyTables, tracker: StudyTracker, outcome: dict) -> dict:
    """Stages 4 and 5, once both models of a pair are analysed: the study tables (transition,
    slopes, shuffle drop, memorization over time) and the report, made again only when the models
    and pairs they are made from changed; then what MLflow still lacks: the models whose pair is
    compared (each run complete, its sample figure drawn by the compare stage) and the study run's
    results and report."""
    state = outcome["state"]
    reported = [trial for trial in state.trials
                if all(member.trial_id in state.analysed for member in state.by_pair[trial.pair_id].values())]
    stamp = state.stamp()
    report_files = None
    # what the study run holds of the transition, if it holds this summary: the values not to log again
    complete = tracker.study_logged(state.analysis_key)
    held = tables.key_rows("transition", "study") if complete else []
    if state.analysed and (store.read_if_present(report_stamp_path(spec.name)) != stamp or not reported or
                           not set(REPORT_ALWAYS) <= set(store.files_below(report_dir(spec.name), recursive=False))):
        report_files = _tables_and_report(spec, store, tables, state, with_report=bool(reported))
    transition = tables.key_rows("transition", "study")
    if not reported:
        return {"report": None, "transition": transition}
    tracked = [trial for trial in reported if trial.pair_id in state.compared]
    logged = track_models(tracker, tracked, tables, state.analysis_key)
    if logged or report_files or not complete:  # a run that failed to log the study logs it now
        tracker.log_study(state.analysis_key, transition, tables.key_rows("memorization_law", "study"),
                          report_files or read_report(store, spec.name), held)
    report = store.uri(f"{report_dir(spec.name)}/index.html")
    log.info(f"[report] {report}")
    return {"report": report, "transition": transition}


def report_study(spec: StudySpec) -> str:
    """`gahb-scale report`: write the report of a study (run or part-run), its study tables made
    again first where they are of other models or settings, and log it to the study's MLflow run;
    returns where index.html is."""
    store = StudyStore(spec.storage.results_location())
    refuse_while_running(store, spec.name, "that run writes its report")  # the tables have one writer at a time
    tables = StudyTables(store, spec.name)
    state = study_state(spec, store, tables)
    if not state.analysed:
        done = (f"is analysed with this spec's sampling/analysis settings and gahb-scale {gahb_scale.__version__} "
                f"yet; run `gahb-scale run` on this spec first (it analyses again without retraining)" if state.trained
                else "is trained yet (part-trained ones are not, nor those of other training settings); run "
                     "`gahb-scale run` on this spec first")
        raise UserInputError(f"study {spec.name}: no model of this spec under {store.results} {done}")
    check_tracking(spec, store)
    tracker = open_tracker(spec, store)
    if store.read_if_present(report_stamp_path(spec.name)) != state.stamp():  # tables of other models or settings
        # as a run does: the study run's transition from the tables made now, NaN for a value gone
        held = tables.key_rows("transition", "study") if tracker.study_logged(state.analysis_key) else []
        files = _tables_and_report(spec, store, tables, state)
        tracker.log_study(state.analysis_key, tables.key_rows("transition", "study"),
                          tables.key_rows("memorization_law", "study"), files, held)
    else:
        files = write_report(spec, store, tables.of(state.analysed, state.compared))
        tracker.log_report(files)
    if tracker.created:  # no `run` had logged this study here (e.g. another tracking store): not left RUNNING
        tracker.client.set_terminated(tracker.parent_id, "FINISHED")
    return store.uri(f"{report_dir(spec.name)}/index.html")
