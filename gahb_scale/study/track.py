"""Stage 5, track — MLflow: one parent run per study, one nested run per trained model.

The parent run holds the spec, the transition metrics (logged with step = N, so MLflow draws
them against N), the report's phase-transition figure and the report under report/; each nested
run holds the trial's parameters, loss curve and the figures the analyse and compare stages drew
(figures/<study>/<trial_id>/: PSNR curves, sample grid A | B | nearest training image, eigen
spectrum, eigenvectors). Runs are found again by tag, so re-running a study updates its runs
instead of adding new ones.

Where runs go: `storage.mlflow_tracking_uri`, else MLFLOW_TRACKING_URI, else an sqlite store beside
local results, or (results on object storage, which cannot hold an sqlite file) one on this machine.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from .progress import log
from .spec import StudySpec
from .store import StudyStore, figure_path
from .summarise import CHANCE_COLUMNS, REFERENCE_COLUMNS
from .trials import Trial

STUDY_TAG, TRIAL_TAG, ANALYSIS_TAG = "gahb.study_id", "gahb.trial_id", "gahb.analysis_id"
ROLE_TAG = "gahb.role"  # "study" or "trial": trial runs carry the study tag too
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


def ui_command(uri: str) -> str:
    """How to see the runs: a tracking server has its UI at its own address; a local store needs `mlflow ui`."""
    if _is_server(uri):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri}"


class StudyTracker:
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
        self.parent_id = self._run({STUDY_TAG: spec.name, ROLE_TAG: "study"}, spec.name, parent=None)

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

    def _find(self, tags: dict[str, str]) -> str | None:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1)
        return runs[0].info.run_id if runs else None

    def _run(self, tags: dict[str, str], name: str, parent: str | None) -> str:
        run_id = self._find(tags)
        if run_id is None:
            extra = {"mlflow.parentRunId": parent} if parent else {}
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags={**tags, **extra}).info.run_id
        return run_id

    def _log_files(self, run_id: str, files: dict[str, bytes], artifact_path: str | None = None) -> None:
        """Files held as bytes, logged in one call (MLflow takes artifacts from local files only)."""
        with tempfile.TemporaryDirectory() as folder:
            for name, data in files.items():
                (Path(folder) / name).write_bytes(data)
            self.client.log_artifacts(run_id, folder, artifact_path=artifact_path)

    def _metrics(self, run_id: str, metrics: list[Metric]) -> None:
        finite = [m for m in metrics if math.isfinite(m.value)]
        for start in range(0, len(finite), 1000):  # MLflow's batch limit
            self.client.log_batch(run_id, metrics=finite[start:start + 1000])

    def trial_logged(self, trial: Trial, analysis_key: str) -> bool:
        run_id = self._find({STUDY_TAG: self.spec.name, TRIAL_TAG: trial.trial_id, ROLE_TAG: "trial"})
        return run_id is not None and self.client.get_run(run_id).data.tags.get(ANALYSIS_TAG) == analysis_key

    def log_trial(self, trial: Trial, analysis_key: str, metrics: dict, losses: list[tuple[int, float]],
                  figures: dict[str, bytes]) -> None:
        name = f"{trial.dataset.name}-{trial.architecture.name}-N{trial.n}-p{trial.pair}-{trial.split}-s{trial.seed}"
        run_id = self._run({STUDY_TAG: self.spec.name, TRIAL_TAG: trial.trial_id, ROLE_TAG: "trial"}, name,
                           parent=self.parent_id)
        params = {**{k: v for k, v in trial.as_row().items() if k != "study_id"},
                  **{f"arch.{k}": v for k, v in trial.architecture.params.items()},
                  **{f"data.{k}": v for k, v in trial.dataset.params.items()},
                  **{f"train.{k}": v for k, v in self.spec.training.model_dump().items()}}
        existing = self.client.get_run(run_id).data.params
        new_params = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, params=new_params)
        self._metrics(run_id, [Metric("loss", loss, now, step) for step, loss in losses]
                      + [Metric(k, float(v), now, 0) for k, v in metrics.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)])
        self._log_files(run_id, figures)
        self.client.set_tag(run_id, ANALYSIS_TAG, analysis_key)  # last: marks the run complete
        self.client.set_terminated(run_id)

    def log_study(self, spec_text: str, transition: list[dict], figure: bytes) -> None:
        now = int(time.time() * 1000)
        metrics = []
        for row in transition:
            prefix = f"{row['dataset']}/{row['architecture']}"
            for key in ("psnr_gap", "nn_cosine_centered", "f_mem", "f_mem_scale_free", "memorizer_distance",
                        "memorizer_distance_bias_free", "ab_cosine",
                        "ab_cosine_centered", "ab_l2", "ab_basis_overlap", "effective_dim", "symmetry_error",
                        "train_psnr", "test_psnr", *REFERENCE_COLUMNS, *CHANCE_COLUMNS,
                        "ab_basis_overlap_chance"):
                if row.get(key) is not None:
                    metrics.append(Metric(f"{prefix}/{key}", float(row[key]), now, int(row["n"])))
        self._metrics(self.parent_id, metrics)
        self.client.log_text(self.parent_id, spec_text, "spec.yaml")
        self._log_files(self.parent_id, {"phase_transition.png": figure})
        self.client.set_terminated(self.parent_id)

    def log_law(self, law: list[dict]) -> None:
        """The memorization-time law on the study run: per dataset/architecture and f_mem measure, the
        exponent of τ_mem ∝ N^b, its 95% CI and how many N values it was fitted on."""
        now = int(time.time() * 1000)
        suffix = {"f_mem": "", "f_mem_scale_free": "_scale_free"}
        self._metrics(self.parent_id, [
            Metric(f"{row['dataset']}/{row['architecture']}/tau_mem_{key}{suffix[row['measure']]}", float(row[key]),
                   now, 0) for row in law for key in ("exponent", "ci_low", "ci_high", "n_values")])

    def log_report(self, files: dict[str, bytes]) -> None:
        """The static report (index.html and its PNGs) as artifacts under report/ of the study run."""
        self._log_files(self.parent_id, files, artifact_path="report")


# A model's figures, drawn by the analyse and compare stages (samples need the partner model's).
TRIAL_FIGURES = ("samples.png", "psnr_curves.png", "eigen_spectrum.png", "eigenvectors.png")


def track_study(spec: StudySpec, spec_text: str, trials: list[Trial], store: StudyStore, analysis_key: str,
                transition: list[dict], report_files: dict[str, bytes] | None) -> StudyTracker:
    """Stage 5, track: one nested run per model of `trials` not yet logged with these analysis
    settings (metrics, loss curve, its figures; only those models' files are read); then, when a
    model was logged or the report was rebuilt (`report_files`), the study run and the report."""
    from .report import read_report

    tracker = StudyTracker(spec, store)
    todo = [trial for trial in trials if not tracker.trial_logged(trial, analysis_key)]
    for i, trial in enumerate(todo, 1):
        metrics = store.key_rows("model_metrics", spec.name, trial.trial_id)[0]
        losses = [(row["step"], row["loss"]) for row in store.key_rows("train_curves", spec.name, trial.trial_id)]
        paths = {name: figure_path(spec.name, trial.trial_id, name) for name in TRIAL_FIGURES}
        tracker.log_trial(trial, analysis_key, metrics, losses,
                          {name: store.read_bytes(path) for name, path in paths.items() if store.exists(path)})
        log.info(f"[mlflow] trial runs {i}/{len(todo)} logged")
    if todo or report_files:
        report_files = report_files or read_report(spec, store)  # a run that failed to log it logs it now
        tracker.log_law(store.key_rows("memorization_law", spec.name, "study"))
        tracker.log_study(spec_text, transition, report_files["transition.png"])
        tracker.log_report(report_files)
    return tracker
