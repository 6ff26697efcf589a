"""MLflow, live: one study run and one nested run per model, each created RUNNING when its work
starts and ended FINISHED, FAILED (with the reason as a tag) or KILLED, found again by tag on a
re-run, and written by the driver alone (what each run gets when, and why through the driver:
docs/internals.md, "MLflow, live").
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
import socket
import sqlite3
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from unittest import mock

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ..design.spec import StudySpec, tracking_uri_problem
from ..design.transition_columns import logged_columns
from ..design.trials import Trial
from ..errors import UserInputError, printable
from ..limits import CONNECT_TIMEOUT_S
from .progress import StageProgress
from .store import StudyStore, StudyTables, figure_path

STUDY_TAG, TRIAL_TAG, ANALYSIS_TAG = "gahb.study_id", "gahb.trial_id", "gahb.analysis_id"
ROLE_TAG = "gahb.role"  # "study" or "trial": trial runs carry the study tag too
ERROR_TAG = "gahb.error"  # why a run ended FAILED, in one line
METRICS_TAG = "gahb.metrics_analysis_id"  # the analysis a model run's metrics are of (the last logged)
OUTSIDE_SPEC = " (not in the spec)"  # ends the name of a model's run once its spec no longer names it
# MLflow 3 opens an experiment without this tag in its GenAI view (traces, prompts), not runs and metrics.
KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def _given_uri(spec: StudySpec) -> str | None:
    return spec.storage.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def _machine_store(spec: StudySpec, store: StudyStore) -> Path | None:
    """The folder of this machine's store when runs go there: no tracking URI given and results
    remote. A home folder, not the current directory, so runs from anywhere end up in one place."""
    if _given_uri(spec) is None and "://" in store.results:
        return Path.home() / ".gahb-scale" / "mlflow"
    return None


def tracking_uri(spec: StudySpec, store: StudyStore) -> str:
    """Where runs go: `storage.mlflow_tracking_uri`, else MLFLOW_TRACKING_URI, else an sqlite store beside
    local results, or (results on object storage, which cannot hold an sqlite file) one on this machine."""
    machine = _machine_store(spec, store)
    if machine is not None:
        return f"sqlite:///{machine / 'mlflow.db'}"
    return _given_uri(spec) or f"sqlite:///{store.path('mlflow.db')}"


def _is_server(uri: str) -> bool:
    return uri.split("://", 1)[0].lower() in ("http", "https")


def store_notice(spec: StudySpec, store: StudyStore) -> str | None:
    """One sentence for the user when runs land where no one else sees them; None otherwise."""
    if _machine_store(spec, store) is None:
        return None
    return (f"storage.mlflow_tracking_uri is not set and results are remote ({store.results}): MLflow runs go to "
            f"the local store {tracking_uri(spec, store)} on this machine; set storage.mlflow_tracking_uri (or "
            f"MLFLOW_TRACKING_URI) to a tracking server to share them")


def _shown(uri: str) -> str:
    """A URI as messages show it: printable, its password (user:password@) left out."""
    return printable(re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", uri))


def _refused(uri: str, exc: MlflowException) -> UserInputError:
    return UserInputError(f"MLflow at {_shown(uri)}: {printable(str(exc).split(' Response body:')[0])[:600]}")


def check_tracking(spec: StudySpec, store: StudyStore) -> None:
    """Before anything is written: the tracking URI (also one from MLFLOW_TRACKING_URI) is one
    MLflow can keep runs at, and a tracking server answers within CONNECT_TIMEOUT_S (MLflow itself
    retries for minutes) as a tracking server does."""
    uri = tracking_uri(spec, store)
    where = "storage.mlflow_tracking_uri" if spec.storage.mlflow_tracking_uri else "MLFLOW_TRACKING_URI"
    if problem := tracking_uri_problem(uri):
        raise UserInputError(f"{where}: {problem}")
    if not _is_server(uri):
        return
    parsed = urllib.parse.urlsplit(uri)
    if not urllib.request.getproxies() or urllib.request.proxy_bypass(parsed.hostname or ""):  # else: via a proxy
        try:
            port = parsed.port or (443 if parsed.scheme.lower() == "https" else 80)
            socket.create_connection((parsed.hostname or "", port), timeout=CONNECT_TIMEOUT_S).close()
        except (OSError, ValueError) as exc:
            raise UserInputError(f"{where}: no tracking server answers at {_shown(uri)} ({exc or 'no answer'}; "
                                 f"waited at most {CONNECT_TIMEOUT_S} s)") from None
    once = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(CONNECT_TIMEOUT_S)}
    try:
        with mock.patch.dict(os.environ, once):  # one try, not MLflow's minutes of retries
            MlflowClient(uri).get_experiment_by_name(f"gahb-scale/{spec.name}")  # a read: nothing is made
    except MlflowException as exc:
        raise _refused(uri, exc) from None


def open_tracker(spec: StudySpec, store: StudyStore) -> StudyTracker:
    """The study's tracker. An MLflow that refuses it (a database it cannot open) is the user's to
    fix: one message, not MLflow's traceback."""
    try:
        return StudyTracker(spec, store)
    except MlflowException as exc:
        raise _refused(tracking_uri(spec, store), exc) from None


# `mlflow ui`'s own address, where the command below serves a local store
LOCAL_UI = "http://127.0.0.1:5000"


def console_command(script: str, module: str) -> str:
    """A console script as runnable from anywhere: its file beside this Python (an environment's
    bin folder, which need not be activated), else this Python running its module (as after a
    `pip install --user`, whose scripts lie elsewhere)."""
    beside = Path(sys.executable).parent / script
    return shlex.quote(str(beside)) if beside.exists() else f"{shlex.quote(sys.executable)} -m {module}"


def ui_command(uri: str) -> str:
    """How to see the runs: a tracking server has its UI at its own address; a local store needs
    `mlflow ui`."""
    if _is_server(uri):
        return f"open {uri} in a browser"
    return f"{console_command('mlflow', 'mlflow')} ui --backend-store-uri {shlex.quote(uri)}"


def experiment_url(uri: str, experiment_id: str) -> str:
    """The page of the experiment's runs (table and charts of the model-training view): MLflow 3
    opens an experiment's bare address on its GenAI overview instead."""
    return f"{uri.rstrip('/') if _is_server(uri) else LOCAL_UI}/#/experiments/{experiment_id}/runs"


_POINT = ("dataset", "architecture", "n")  # what a transition row is the point of


def _point(row: dict) -> tuple:
    return tuple(row[key] for key in _POINT)


class StudyTracker:
    """A study's MLflow runs, found again by tag or created; written by the driver only."""

    # Seconds between writes of streamed training metrics: a large study's reports are batched
    # instead of costing one request each.
    FLUSH_EVERY_S = 2.0

    def __init__(self, spec: StudySpec, store: StudyStore):
        self.spec, self.store = spec, store
        self.uri = tracking_uri(spec, store)
        machine = _machine_store(spec, store)
        if machine is not None:
            machine.mkdir(parents=True, exist_ok=True)  # sqlite creates the file, not its folder
        self.client = MlflowClient(self.uri)
        name = f"gahb-scale/{spec.name}"
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(
                name, artifact_location=self._artifact_location(machine), tags={KIND_TAG: MODEL_TRAINING})
        else:
            self.experiment_id = experiment.experiment_id
            self._follow_moved_results(experiment.artifact_location)
            if KIND_TAG not in experiment.tags:  # made before the tag was set; a user's own choice stays
                self.client.set_experiment_tag(self.experiment_id, KIND_TAG, MODEL_TRAINING)
        study_tags = {STUDY_TAG: spec.name, ROLE_TAG: "study"}
        found = self._search(study_tags)
        self.created = not found  # a study run made here, not by `run`: whoever made it ends it
        self.parent_id = (found[0].info.run_id if found else
                          self.client.create_run(self.experiment_id, run_name=spec.name, tags=study_tags).info.run_id)
        # the study's model runs, by trial id: one search, not one per model
        self.models = {run.data.tags[TRIAL_TAG]: run for run in self._search({STUDY_TAG: spec.name, ROLE_TAG: "trial"})}
        self.last_step: dict[str, int] = {}  # per trial id: the last training step whose metrics are logged
        self.pending: dict[str, list[Metric]] = {}
        self.last_flush = 0.0
        self.monitor = None
        self.transition_logged: set[int] = set()  # the N whose transition metrics this run has logged

    def _artifact_location(self, machine: Path | None) -> str | None:
        if _is_server(self.uri):
            return None  # the server decides, e.g. `mlflow server --artifacts-destination s3://...` proxies them
        if machine is not None:
            return str(machine / "artifacts")
        return self.store.uri("mlflow-artifacts")

    def _follow_moved_results(self, recorded: str) -> None:
        """The sqlite store beside local results records its artifact locations as absolute paths
        (MLflow makes them so), which name the old place once the results folder is copied or moved.
        They are rewritten to this folder's, in this folder's own store only, so logging here never
        writes to the old place. A store given by the user is left as it is."""
        here = self.store.uri("mlflow-artifacts")
        if recorded == here or self.uri != f"sqlite:///{self.store.path('mlflow.db')}" or \
                Path(recorded).name != "mlflow-artifacts":
            return
        moved = (here, len(recorded) + 1, len(recorded) + 1, f"{recorded}/")
        with contextlib.closing(sqlite3.connect(self.store.path("mlflow.db"))) as db, db:
            runs = [row[0] for row in db.execute("SELECT run_uuid FROM runs WHERE substr(artifact_uri, 1, ?) = ?",
                                                 moved[2:])]
            db.execute("UPDATE experiments SET artifact_location = ? WHERE artifact_location = ?", (here, recorded))
            db.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE substr(artifact_uri, 1, ?) = ?",
                       moved)
        # MLflow keeps each run's artifact store for the life of the process: forget the old ones
        from mlflow.tracking._tracking_service import utils

        for run_id in runs:
            getattr(utils, "_artifact_repos_cache", {}).pop(run_id, None)

    def _search(self, tags: dict[str, str]) -> list:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1000,
                                           page_token=token)
            runs += page
            token = page.token
            if not token:
                return runs

    def _log_files(self, run_id: str, files: dict[str, bytes], artifact_path: str | None = None) -> None:
        """Files held as bytes, logged in one call (MLflow takes artifacts from local files only)."""
        if not files:
            return
        with tempfile.TemporaryDirectory() as folder:
            for name, data in files.items():
                (Path(folder) / name).write_bytes(data)
            self.client.log_artifacts(run_id, folder, artifact_path=artifact_path)

    def _metrics(self, run_id: str, metrics: list[Metric], undefined_too: bool = False) -> None:
        """Log `metrics`; one that is NaN or infinite (undefined) only with `undefined_too`."""
        kept = metrics if undefined_too else [m for m in metrics if math.isfinite(m.value)]
        self.client.log_batch(run_id, metrics=kept)  # MLflow's client sends it in batches of its limit

    # -- the study run ------------------------------------------------------------------------

    def start(self, spec_text: str) -> None:
        """The study run is RUNNING (again, on a re-run), holds the spec, and records the driver
        machine's system metrics until `finish`."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        run = self.client.get_run(self.parent_id)
        if run.info.status != "RUNNING":
            self.client.update_run(self.parent_id, status="RUNNING")
        self.client.log_text(self.parent_id, spec_text, "spec.yaml")
        self.monitor = SystemMetricsMonitor(self.parent_id, resume_logging=run.info.status != "RUNNING" or
                                            "system/cpu_utilization_percentage" in run.data.metrics,
                                            tracking_uri=self.uri)
        self.monitor.start()

    def finish(self, status: str) -> None:
        """End the study run: FINISHED, FAILED or KILLED, now; model runs still RUNNING were
        stopped before their model was done (KILLED)."""
        self.flush(force=True)
        for run in self.models.values():
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, "KILLED")
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None
        self.client.set_terminated(self.parent_id, status)

    def log_transition(self, rows: list[dict], held: list[dict] = ()) -> None:
        """Transition metrics on the study run, step = N (the charts' x axis; log scale in their settings);
        NaN where a measure is undefined, so that a value an earlier summary logged does not stay. A
        value the run already holds (`held`: the rows it was last given) is not logged again: it would
        be one more point at the same N."""
        now, kept = int(time.time() * 1000), {(_point(row), key): repr(row.get(key)) for row in held
                                              for key in logged_columns()}
        self.transition_logged |= {int(row["n"]) for row in rows}
        self._metrics(self.parent_id, [
            Metric(f"{row['dataset']}/{row['architecture']}/{key}",
                   math.nan if row.get(key) is None else float(row[key]), now, int(row["n"]))
            for row in rows for key in logged_columns() if kept.get((_point(row), key)) != repr(row.get(key))],
            undefined_too=True)

    def study_logged(self, analysis_key: str) -> bool:
        """Whether the study run holds the study's tables and report for these analysis settings."""
        return self.client.get_run(self.parent_id).data.tags.get(ANALYSIS_TAG) == analysis_key

    def log_study(self, analysis_key: str, transition: list[dict], law: list[dict], report: dict[str, bytes],
                  held: list[dict] = ()) -> None:
        """The study-level results once every stage has run: the transition's rows not logged while
        the pairs were compared (of those, the values `held` does not hold; NaN for the N of `held`
        it no longer has); the memorization-time law, per dataset/architecture and f_mem measure
        (the exponent of τ_mem ∝ N^b, its 95% CI and how many N values it was fitted on; NaN where
        there is no fit or no interval); the transition figure and the report."""
        # an N the table no longer has (taken out of the spec): NaN, so its old values are not the latest
        gone = [dict(zip(_POINT, point))
                for point in {_point(row) for row in held} - {_point(row) for row in transition}]
        self.log_transition([row for row in transition if row["n"] not in self.transition_logged] + gone, held)
        suffix = {"f_mem": "", "f_mem_scale_free": "_scale_free"}
        fits = {f"{row['dataset']}/{row['architecture']}/tau_mem_{key}{suffix[row['measure']]}": float(row[key])
                for row in law for key in ("exponent", "ci_low", "ci_high", "n_values")}
        # NaN too (no fit, no interval, or a fit the study no longer has): a value an earlier summary
        # of the study logged must not stay the latest
        held_fits = self.client.get_run(self.parent_id).data.metrics
        fits.update({key: math.nan for key, value in held_fits.items()
                     if "/tau_mem_" in key and key not in fits and not math.isnan(value)})
        now = int(time.time() * 1000)
        self._metrics(self.parent_id, [Metric(key, value, now, 0) for key, value in fits.items()], undefined_too=True)
        self._log_files(self.parent_id, {"phase_transition.png": report["transition.png"]})
        self.log_report(report)
        self.client.set_tag(self.parent_id, ANALYSIS_TAG, analysis_key)  # last: marks it complete

    def log_report(self, files: dict[str, bytes]) -> None:
        """The static report (index.html and its PNGs) as artifacts under report/ of the study run."""
        self._log_files(self.parent_id, files, artifact_path="report")

    # -- the model runs -----------------------------------------------------------------------

    def model_run(self, trial: Trial) -> str:
        """The model's run id; created RUNNING, with the trial's parameters, if it has none yet."""
        run = self.models.get(trial.trial_id)
        if run is None:
            name = f"{trial.dataset.name}-{trial.architecture.name}-N{trial.n}-p{trial.pair}-{trial.split}-s{trial.seed}"
            tags = {STUDY_TAG: self.spec.name, TRIAL_TAG: trial.trial_id, ROLE_TAG: "trial",
                    "mlflow.parentRunId": self.parent_id}
            run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
            params = {**{k: v for k, v in trial.as_row().items() if k != "study_id"},
                      **{f"arch.{k}": v for k, v in trial.architecture.params.items()},
                      **{f"data.{k}": v for k, v in trial.dataset.params.items()},
                      # the model's own schedule where the spec gives one per N
                      **{f"train.{k}": v for k, v in {**self.spec.training.model_dump(),
                                                      **self.spec.training.per_train_size(trial.n)}.items()}}
            self.client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
            self.models[trial.trial_id] = run
            self.last_step[trial.trial_id] = 0
        return run.info.run_id

    def name_outside_spec(self, spec_ids: set[str]) -> None:
        """The runs of models the spec no longer names (other training settings, an N taken out) say
        so in their name: in the UI they would read as the spec's own models, which have the same
        names. One put back in the spec gets its name back."""
        for trial_id, run in self.models.items():
            name = run.info.run_name.removesuffix(OUTSIDE_SPEC)
            wanted = name if trial_id in spec_ids else name + OUTSIDE_SPEC
            if run.info.run_name != wanted:
                self.client.update_run(run.info.run_id, name=wanted)
                self.models[trial_id] = self.client.get_run(run.info.run_id)

    def trial_logged(self, trial: Trial, analysis_key: str) -> bool:
        """Whether the model's run is complete for these analysis settings."""
        run = self.models.get(trial.trial_id)
        return run is not None and run.data.tags.get(ANALYSIS_TAG) == analysis_key

    def training_started(self, trials: tuple[Trial, ...]) -> None:
        for trial in trials:
            run_id = self.model_run(trial)
            # failed or stopped before: training again (a finished model's pack partner may train again alone)
            if self.models[trial.trial_id].info.status not in ("RUNNING", "FINISHED"):
                self.client.update_run(run_id, status="RUNNING")
                self.models[trial.trial_id] = self.client.get_run(run_id)

    def _logged_loss_steps(self, trial: Trial) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.model_run(trial), "loss")}

    def log_training(self, trials: tuple[Trial, ...], step: int, report: dict) -> None:
        """One training report of a pack: each model's loss, and the pack's lr and images/s (and MFU).
        Steps already logged (a resumed pack reports again from its checkpoint) are skipped."""
        now = int(time.time() * 1000)
        for trial, loss in zip(trials, report["losses"]):
            run_id = self.model_run(trial)
            if trial.trial_id not in self.last_step:  # a run from before: continue after its last point
                self.last_step[trial.trial_id] = max(self._logged_loss_steps(trial), default=0)
            if step <= self.last_step[trial.trial_id]:
                continue
            self.last_step[trial.trial_id] = step
            values = {"loss": loss, "lr": report.get("lr"), "pack_images_per_s": report.get("images_per_s"),
                      "mfu": report.get("mfu")}
            self.pending.setdefault(run_id, []).extend(
                Metric(key, float(value), now, step) for key, value in values.items() if value is not None)
        self.flush()

    def flush(self, force: bool = False) -> None:
        """Write the streamed metrics held back, at most every FLUSH_EVERY_S unless forced."""
        if not force and time.monotonic() - self.last_flush < self.FLUSH_EVERY_S:
            return
        pending, self.pending = self.pending, {}
        for run_id, metrics in pending.items():
            self._metrics(run_id, metrics)
        self.last_flush = time.monotonic()

    def fill_losses(self, trial: Trial, losses: list[tuple[int, float]]) -> None:
        """The loss points of the model's saved curve that its run lacks (a driver killed before it
        wrote them, or a run made after training)."""
        logged = self._logged_loss_steps(trial)
        now = int(time.time() * 1000)
        self._metrics(self.model_run(trial), [Metric("loss", loss, now, step) for step, loss in losses
                                              if step not in logged])

    def log_analysis(self, trial: Trial, metrics: dict, figures: dict[str, bytes]) -> None:
        """A model's analysis (its `model_metrics` row, undefined measures as NaN as in the study run)
        and figures. A run holding this analysis's metrics already gets no second point of them; one
        holding another analysis's gets this one's as its latest points."""
        now = int(time.time() * 1000)
        run_id = self.model_run(trial)
        run = self.models[trial.trial_id]
        logged = run.data.metrics if run.data.tags.get(METRICS_TAG) == metrics["analysis_id"] else {}
        self._metrics(run_id, [Metric(k, float(v), now, 0) for k, v in metrics.items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in logged],
                      undefined_too=True)
        self.client.set_tag(run_id, METRICS_TAG, metrics["analysis_id"])
        run.data.tags[METRICS_TAG] = metrics["analysis_id"]
        self._log_files(run_id, figures)

    def log_compared(self, trial: Trial, analysis_key: str, figures: dict[str, bytes]) -> None:
        """The last of a model: its sample figure; the run is then complete and FINISHED."""
        run_id = self.model_run(trial)
        self._log_files(run_id, figures)
        if ERROR_TAG in self.models[trial.trial_id].data.tags:  # failed before, done now
            self.client.delete_tag(run_id, ERROR_TAG)
        self.client.set_tag(run_id, ANALYSIS_TAG, analysis_key)  # last: marks the run complete
        self.client.set_terminated(run_id, "FINISHED")
        self.models[trial.trial_id] = self.client.get_run(run_id)

    def model_failed(self, trial: Trial, reason: str) -> None:
        run_id = self.model_run(trial)
        self.flush(force=True)
        self.client.set_tag(run_id, ERROR_TAG, reason[:5000])
        self.client.set_terminated(run_id, "FAILED")
        self.models[trial.trial_id] = self.client.get_run(run_id)


# A model's figures as the analyse stage (PSNR curves, eigen spectrum, eigenvectors) and the compare
# stage (samples, which need the partner model's) left them in the store.
MODEL_FIGURES = ("psnr_curves.png", "eigen_spectrum.png", "eigenvectors.png", "samples.png")


def track_models(tracker: StudyTracker, trials: list[Trial], tables: StudyTables, analysis_key: str) -> bool:
    """The end of stage 5: each compared model of `trials` whose run is not complete (logged live,
    every model's is; not so where runs were lost, in another tracking store, or a driver was killed
    before it logged them) gets what it lacks from the store, its losses filled in when the run
    started; returns whether any did."""
    todo = [trial for trial in trials if not tracker.trial_logged(trial, analysis_key)]
    if not todo:
        return False
    progress = StageProgress("mlflow", len(todo), "run")
    for trial in todo:
        figures = {name: tables.store.read_if_present(figure_path(tracker.spec.name, trial.trial_id, name))
                   for name in MODEL_FIGURES}
        tracker.log_analysis(trial, tables.key_rows("model_metrics", trial.trial_id)[0],
                             {name: png for name, png in figures.items() if png is not None})
        tracker.log_compared(trial, analysis_key, {})
        progress.update()
    progress.close()
    return True
