"""A micro-study end to end on local Ray: every table, MLflow, idempotent re-run, resume after kill.

Slow by nature (Ray starts processes per trial): the whole file takes a few minutes on 2 CPUs.
The tests share one results folder and run in order.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import study_checks
import yaml
from mlflow.tracking import MlflowClient

from gahb_scale.cli import main
from gahb_scale.design.spec_file import load_spec
from gahb_scale.design.trials import expand_trials
from gahb_scale.study.query import run_query
from gahb_scale.study.store import StudyStore, model_path
from gahb_scale.study.train import max_concurrent, plan_packs

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """The micro study with its results in a temporary folder: (spec path, results folder)."""
    folder = tmp_path_factory.mktemp("micro")
    data = yaml.safe_load((ROOT / "studies" / "micro.yaml").read_text())
    data["storage"] = {"results_dir": str(folder / "results" / "micro")}
    spec_path = folder / "micro.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    return spec_path, folder / "results" / "micro"


def table_rows(results: Path) -> dict[str, list[dict]]:
    return study_checks.table_rows(str(results))


def table_text(results: Path) -> str:
    """The tables as text: comparable even where they hold NaN (which is not equal to itself)."""
    return repr(table_rows(results))


def test_micro_study_end_to_end(micro, capsys):
    spec_path, results = micro
    assert main(["run", str(spec_path)]) == 0
    out = capsys.readouterr().out
    assert "transition table" in out and f"mlflow ui --backend-store-uri sqlite:///{results / 'mlflow.db'}" in out

    spec = load_spec(spec_path)
    trials = expand_trials(spec)
    rows = study_checks.assert_every_row_once(str(results), spec)
    # every pack finished: no record and no checkpoint of one is kept, nor Tune's record of the grid
    assert not list((results / "packs").iterdir())
    assert [p.name for p in (results / "ray").iterdir() if not p.name.startswith(".")] == []
    a = spec.analysis
    n_models = len(trials)
    assert all(r["distance"] >= 0 for r in rows["memorizer_distance"])
    for r in rows["pair_bases"]:
        assert 0 <= r["basis_overlap"] <= 1 + 1e-9 and r["chance"] == a.eigenvector_images / spec.image_size**2
    assert sorted(r["n"] for r in rows["transition"]) == spec.train_sizes
    for r in rows["disc_tangent"]:  # micro trains on discs
        assert r["tangent_dims"] == 5 and 0 <= r["energy_inside"] <= 1 + 1e-6
        assert 0 <= r["leading_alignment"] <= 1 + 1e-6 and r["eigenvalues_above"] >= 0
    assert sorted({r["step"] for r in rows["snapshot_samples"]}) == [*spec.training.snapshot_steps, spec.training.steps]
    assert sorted(r["n"] for r in rows["memorization_onset"]) == spec.train_sizes
    assert sorted(r["n"] for r in rows["slopes"]) == spec.train_sizes
    assert all(r["alpha"] is None and r["psnr_slope"] > 0 for r in rows["slopes"])
    study_level = ("transition", "slopes", "memorization_time", "memorization_onset", "memorization_law")
    for name, table in rows.items():
        for row in table:
            assert row["study_id"] == "micro", name
            assert row.get("trial_id") or row.get("pair_id") or name in study_level, name

    # the science of the tables, as far as a 20-step model allows
    by_n = {r["n"]: r for r in rows["transition"]}
    for name in ("f_mem", "f_mem_scale_free"):
        assert by_n[1][name] != by_n[1][name]  # NaN: undefined for N = 1, not invented
        assert 0 <= by_n[4][name] <= 1
    assert all(r["memorizer_distance"] >= 0 and 0 <= r["symmetry_error"] for r in rows["transition"])
    for r in rows["transition"]:  # chance levels beside the measures, the same k/n as pair_bases
        assert r["ab_basis_overlap_chance"] == a.eigenvector_images / spec.image_size**2
        assert -1 <= r["ab_cosine_centered_chance"] <= 1 and r["ab_l2_chance"] > 0
    assert 0 <= by_n[4]["f_mem_chance"] <= 1 and by_n[4]["symmetry_error_gaussian"] >= 0
    for r in rows["samples"]:
        assert r["steps"] >= 1 and -1 - 1e-6 <= r["nn_cosine_centered"] <= 1 + 1e-6
    for r in rows["pairs"]:
        assert r["diverged"] or (-1 - 1e-6 <= r["cosine_centered"] <= 1 + 1e-6 and r["l2_normalized"] >= 0)
    assert sum(r["ab_samples"] for r in rows["transition"]) == sum(not r["diverged"] for r in rows["pairs"])

    # MLflow: one study run with one nested run per model, each with its figures
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gahb-scale/micro")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == n_models
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {"phase_transition.png", "spec.yaml"} <= {f.path for f in client.list_artifacts(parents[0].info.run_id)}
    child_files = {f.path for f in client.list_artifacts(children[0].info.run_id)}
    assert {"samples.png", "psnr_curves.png", "eigen_spectrum.png", "eigenvectors.png"} <= child_files
    assert client.get_metric_history(children[0].info.run_id, "loss")
    f_mem_history = client.get_metric_history(parents[0].info.run_id, "discs/unet_micro/psnr_gap")
    assert sorted(m.step for m in f_mem_history) == spec.train_sizes

    # the report: a static page whose every figure exists, also logged to the study's MLflow run
    page = results / "reports" / "micro" / "index.html"
    text = page.read_text()
    figures = re.findall(r'<img src="([^"]+)"', text)
    assert "transition.png" in figures and any(f.startswith("tangent-") for f in figures)
    assert "memorization-time.png" in figures and any(f.startswith("memorizer-") for f in figures)
    for name in figures:
        assert (page.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    report_files = {f.path for f in client.list_artifacts(parents[0].info.run_id, "report")}
    assert {"report/index.html", "report/transition.png"} <= report_files
    _open_headless(page)

    # SQL over the tables
    assert main(["query", "SELECT count(*) AS n FROM samples WHERE study_id = 'micro'", "--results",
                 str(results.parent)]) == 0
    assert str(n_models * spec.sampling.num_samples) in capsys.readouterr().out


def _open_headless(page: Path) -> None:
    """Load the report in headless Chromium, where one is installed, and fail on any console error
    (a missing image or a script error); the files themselves are checked above in any case."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        return
    result = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                             "--v=0", "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Study micro" in result.stdout
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line or "Failed to load" in line]
    assert not console, console


def test_the_docs_name_the_tables_and_columns_a_finished_study_writes(micro):
    """docs/tables.md against the micro study's tables, and every query the docs show run on them."""
    import test_docs

    _, results = micro
    assert test_docs.problems_against_results(results.parent) == []


def test_a_run_writes_only_the_entries_that_mark_a_results_folder(micro):
    """`run` refuses a folder holding none of STUDY_ENTRIES, so a study must write nothing else at
    the top of its folder, or it would refuse its own results."""
    from gahb_scale.study.store import STUDY_ENTRIES

    _, results = micro
    entries = {p.name for p in results.iterdir()}
    assert entries and entries <= STUDY_ENTRIES, entries - STUDY_ENTRIES


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_a_copied_results_folder_works_in_its_new_place_and_writes_only_there(micro, tmp_path, monkeypatch, capsys):
    """A finished study's results root copied elsewhere, the original gone: status, query and
    report on the copy succeed and write nothing outside it (the original is moved aside and put
    back afterwards, for the tests that follow)."""
    from mlflow.tracking import MlflowClient

    spec_path, results = micro
    copy = tmp_path / "elsewhere"
    shutil.copytree(results.parent, copy)
    aside = results.parent.with_name("results-aside")
    results.parent.rename(aside)
    try:
        monkeypatch.chdir(tmp_path)
        outside = _tree(spec_path.parent)
        assert main(["status", str(spec_path), "--results", str(copy)]) == 0
        assert f"study micro ({copy / 'micro'}): 4 models — 4 trained" in capsys.readouterr().out
        assert main(["query", "SELECT model_path FROM trials WHERE study_id = 'micro'", "--results", str(copy)]) == 0
        paths = re.findall(r"models/\S+/model\.pt", capsys.readouterr().out)
        assert len(paths) == 4 and all((copy / "micro" / path).is_file() for path in paths)  # relative to the folder
        assert main(["report", str(spec_path), "--results", str(copy)]) == 0
        assert f"report: {copy / 'micro' / 'reports' / 'micro' / 'index.html'}" in capsys.readouterr().out

        assert not results.parent.exists()  # the old place is not recreated
        assert _tree(spec_path.parent) == outside and sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere"]
        client = MlflowClient(f"sqlite:///{copy / 'micro' / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("gahb-scale/micro")
        assert experiment.artifact_location == str(copy / "micro" / "mlflow-artifacts")
        study_run = next(r for r in client.search_runs([experiment.experiment_id])
                         if "mlflow.parentRunId" not in r.data.tags)
        assert {"report/index.html"} <= {f.path for f in client.list_artifacts(study_run.info.run_id, "report")}
    finally:
        if results.parent.exists():  # written by mistake: the assertion above has failed already
            shutil.rmtree(results.parent)
        aside.rename(results.parent)


def test_rerun_trains_nothing_and_adds_no_row(micro, capsys, tmp_path, monkeypatch):
    spec_path, results = micro
    before = table_text(results)
    stamps = {p: p.stat().st_mtime_ns for p in (results / "tables").glob("*/*/*.parquet")}
    assert len(stamps) > 30
    stamps[results / "reports" / "micro" / "index.html"] = (results / "reports" / "micro" / "index.html").stat().st_mtime_ns
    models = {p: p.stat().st_mtime_ns for p in (results / "models").glob("*/model.pt")}
    assert main(["run", str(spec_path)]) == 0
    out = capsys.readouterr().out
    assert "already trained" in out and "already analysed" in out
    assert table_text(results) == before
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # untouched, not rewritten
    assert {p: p.stat().st_mtime_ns for p in models} == models

    assert main(["status", str(spec_path)]) == 0
    status = capsys.readouterr().out
    assert "4 models — 4 trained" in status and "2/2 split pairs compared" in status

    # runs lost, or another tracking store: every model is logged again, and the study run gets the
    # report as it is stored (not rebuilt: no table changed)
    from mlflow.tracking import MlflowClient

    other = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    assert main(["run", str(spec_path)]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    client = MlflowClient(other)
    runs = client.search_runs([client.get_experiment_by_name("gahb-scale/micro").experiment_id])
    parents = [r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 1 + len(models)
    assert {"phase_transition.png", "spec.yaml", "report"} <= {f.path for f in client.list_artifacts(parents[0])}
    report = {f.path for f in client.list_artifacts(parents[0], "report")}
    assert {"report/index.html", "report/transition.png"} <= report

    # `report` into a store no run has logged to: its new study run is ended, not left RUNNING
    third = f"sqlite:///{tmp_path / 'third.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", third)
    assert main(["report", str(spec_path)]) == 0
    client = MlflowClient(third)
    [study_run] = client.search_runs([client.get_experiment_by_name("gahb-scale/micro").experiment_id])
    assert study_run.info.status == "FINISHED" and "report" in {f.path for f in client.list_artifacts(study_run.info.run_id)}


def _latest_cosine(results: Path, n: int) -> float:
    """The study run's latest A/B cosine at N = n (its charts show the latest point)."""
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gahb-scale/micro").experiment_id
    (study_run,) = client.search_runs([experiment], "tags.`gahb.role` = 'study'")
    history = client.get_metric_history(study_run.info.run_id, "discs/unet_micro/ab_cosine_centered")
    return max((metric for metric in history if metric.step == n), key=lambda metric: metric.timestamp).value


def _copy_with_train_sizes(micro, tmp_path, sizes: list[int], name: str) -> tuple[Path, Path]:
    """A copy of the finished micro study's results root, and a spec `name`.yaml of these train
    sizes whose results are in the copy: (spec, copy)."""
    spec_path, results = micro
    copy = tmp_path / "results"
    shutil.copytree(results.parent, copy)
    data = yaml.safe_load(spec_path.read_text())
    data["storage"] = {"results_dir": str(copy / "micro")}
    data["train_sizes"] = sizes
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(yaml.safe_dump(data))
    return spec, copy


def test_extending_a_finished_study_trains_only_its_new_models(micro, tmp_path, capsys):
    """A new N added to the finished micro study (a copy of it): exactly the new N's two models
    train; the finished models' files and training records stay as they were."""
    grown, copy = _copy_with_train_sizes(micro, tmp_path, [1, 2, 4], "micro_grown")
    assert main(["status", str(grown)]) == 0  # before the run: its tables are of the pairs compared so far
    status = capsys.readouterr().out
    assert "2 not started" in status and "study tables and report written, of the 2 split pair(s) compared so far" \
        in status and "resume with" not in status
    finished = {p.parent.name: (p.stat().st_mtime_ns, (p.parent / "training.json").read_bytes())
                for p in (copy / "micro" / "models").glob("*/model.pt")}
    assert len(finished) == 4

    assert main(["run", str(grown)]) == 0
    assert "[train] 2 models to train in " in capsys.readouterr().out
    spec = load_spec(grown)
    new = {t.trial_id for t in expand_trials(spec) if t.n == 2}
    trained = {p.parent.name: (p.stat().st_mtime_ns, (p.parent / "training.json").read_bytes())
               for p in (copy / "micro" / "models").glob("*/model.pt")}
    assert trained.keys() == finished.keys() | new and {k: trained[k] for k in finished} == finished
    packs = {row["trial_id"]: row["pack_id"] for row in StudyStore(str(copy / "micro")).rows("trials")}
    assert len(packs) == 6 and {packs[t] for t in new}.isdisjoint(packs[t] for t in finished)
    study_checks.assert_every_row_once(str(copy / "micro"), spec)


def test_a_study_run_again_with_fewer_models_tabulates_only_its_own(micro, tmp_path, capsys):
    """N = 4 dropped from the finished micro study (a copy of it): its models' files stay in the
    folder, but the study tables and the report are made again from the N = 1 models alone."""
    shrunk, copy = _copy_with_train_sizes(micro, tmp_path, [1], "micro_shrunk")
    assert main(["run", str(shrunk)]) == 0
    assert "[train] all 2 models already trained" in capsys.readouterr().out
    store = StudyStore(str(copy / "micro"))
    assert len(store.rows("model_metrics")) == 4  # the N = 4 models' rows are kept...
    assert [(row["n"], row["models"]) for row in store.rows("transition")] == [(1, 2)]  # ...but not pooled

    def run_names() -> dict[int, set[str]]:
        client = MlflowClient(f"sqlite:///{copy / 'micro' / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("gahb-scale/micro").experiment_id
        names = defaultdict(set)
        for run in client.search_runs([experiment], "tags.`gahb.role` = 'trial'"):
            names[int(run.data.params["n"])].add(run.info.run_name.endswith(" (not in the spec)"))
        return names

    assert run_names() == {1: {False}, 4: {True}}
    assert math.isnan(_latest_cosine(copy / 'micro', 4))  # N = 4's old value is not the study's latest any more
    data = yaml.safe_load(shrunk.read_text())
    data["train_sizes"] = [1, 4]  # put back: its runs get their names back, the study run its values
    shrunk.write_text(yaml.safe_dump(data))
    assert main(["run", str(shrunk)]) == 0
    assert run_names() == {1: {False}, 4: {False}}
    (row,) = [row for row in store.rows("transition") if row["n"] == 4]
    assert _latest_cosine(copy / 'micro', 4) == pytest.approx(row["ab_cosine_centered"])


def test_report_of_a_spec_with_fewer_models_makes_its_study_tables_again(micro, tmp_path, capsys):
    """`report` on a spec naming only some of the folder's models: its report and transition table
    are of those models, not the table the last run made of all of them."""
    shrunk, copy = _copy_with_train_sizes(micro, tmp_path, [1], "micro_shrunk")
    assert main(["report", str(shrunk)]) == 0
    capsys.readouterr()
    store = StudyStore(str(copy / "micro"))
    assert [(row["n"], row["models"]) for row in store.rows("transition")] == [(1, 2)]
    assert "2 analysed models" in (copy / "micro" / "reports" / "micro" / "index.html").read_text()
    assert math.isnan(_latest_cosine(copy / "micro", 4))  # MLflow's study run follows the tables, as after a run
    assert main(["status", str(shrunk)]) == 0 and "report written, up to date" in capsys.readouterr().out


def test_models_of_earlier_settings_stay_apart_from_the_spec_s_own(micro, tmp_path, capsys):
    """N = 1 trained for fewer steps in a copy of the finished micro study: its two models are new
    ones. The old ones stay in the tables, and `run` and `status` say so; spec_models tells them
    apart, and neither the transition table nor the study run's MLflow metrics pool them."""
    spec_path, results = micro
    copy = tmp_path / "results"
    shutil.copytree(results.parent, copy)
    data = yaml.safe_load(spec_path.read_text())
    data["storage"] = {"results_dir": str(copy / "micro")}
    data["training"]["steps"] = {1: 30, 4: data["training"]["steps"]}
    changed = tmp_path / "micro_changed.yaml"
    changed.write_text(yaml.safe_dump(data))
    note = "tables also hold 2 model(s) its spec no longer names"
    assert main(["run", str(changed)]) == 0
    out = capsys.readouterr().out
    assert "[train] 2 models to train in " in out and note in out

    ids = {t.trial_id for t in expand_trials(load_spec(changed))}
    store = StudyStore(str(copy / "micro"))
    assert len(store.rows("trials")) == 6 and {row["trial_id"] for row in store.rows("spec_models")} == ids
    columns, rows = run_query("SELECT count(*) FROM trials JOIN spec_models USING (study_id, trial_id)", str(copy))
    assert rows == [(4,)]
    assert [row["models"] for row in store.rows("transition")] == [2, 2]
    # samples that diverged (30 steps leave a weak denoiser: here all of N = 1's did) are said under the table
    for row in store.rows("transition"):
        diverged = f"note: discs/unet_micro N = {row['n']}: {row['diverged_samples']} of 8 samples diverged (left out"
        assert (diverged in out) == (row["diverged_samples"] > 0)
    client = MlflowClient(f"sqlite:///{copy / 'micro' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gahb-scale/micro").experiment_id
    (study_run,) = client.search_runs([experiment], "tags.`gahb.role` = 'study'")
    # in the UI, the old models' runs would read as the spec's own, whose names they share
    names = {run.data.tags["gahb.trial_id"]: run.info.run_name
             for run in client.search_runs([experiment], "tags.`gahb.role` = 'trial'")}
    assert len(names) == 6 and all(name.endswith(" (not in the spec)") == (trial_id not in ids)
                                   for trial_id, name in names.items())
    for n in (1, 4):
        (row,) = [row for row in store.rows("transition") if row["n"] == n]
        logged = [metric for metric in client.get_metric_history(study_run.info.run_id,
                                                                 "discs/unet_micro/ab_cosine_centered") if metric.step == n]
        # N = 1: the first run's value, then this one's (NaN where it is undefined now); N = 4: not again
        assert len(logged) == (2 if n == 1 else 1)
        value = row["ab_cosine_centered"]
        latest = max(logged, key=lambda metric: metric.timestamp).value
        assert latest == pytest.approx(value) if value is not None and not math.isnan(value) else math.isnan(latest)

    assert main(["status", str(changed)]) == 0
    status = capsys.readouterr().out
    assert "study tables and report written, up to date" in status and note in status


def _ray_processes() -> set[int]:
    """The processes of this machine that Ray runs (its servers and workers)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:  # ended meanwhile
            continue
        if any(mark in command for mark in (b"ray::", b"raylet", b"gcs_server", b"default_worker.py", b"ray/_private")):
            found.add(int(entry.name))
    return found


def _end_ray_processes_since(before: set[int], within: float = 60.0) -> None:
    """A killed driver's Ray workers outlive it a while (they notice its Ray is gone) and may
    register one more checkpoint meanwhile: wait for them to go, as a user's next command would
    come after, and kill any still there."""
    deadline = time.monotonic() + within
    while (left := _ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # ended meanwhile; another user's
            pass


@pytest.mark.parametrize("sent, steps", [(signal.SIGKILL, 400), (signal.SIGTERM, 350)], ids=["SIGKILL", "SIGTERM"])
def test_killed_study_resumes_from_checkpoints(micro, tmp_path, capsys, sent, steps):
    """Kill a run mid-training, then run again: it continues from the checkpoint. SIGKILL: no
    clean-up at all. SIGTERM, as `ray job stop` sends it: the run ends as Ctrl-C ends it (exit 130,
    its MLflow study run KILLED, its run marker gone)."""
    spec_path, results = micro
    data = yaml.safe_load(spec_path.read_text())
    # new trial ids (the steps): a fresh training run
    data["training"].update(steps=steps, checkpoint_every=50, log_every=50)
    data["train_sizes"] = [4]
    data["resources"]["models_per_pack"] = 2  # both models in one pack: the kill interrupts a pack
    spec_file = tmp_path / "micro_resume.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    spec = load_spec(spec_file)
    trials = expand_trials(spec)
    packs = plan_packs(spec, trials, max_concurrent(spec, {"CPU": os.cpu_count()}))

    before = _ray_processes()
    with open(tmp_path / "stderr.txt", "w") as stderr:  # a file: a pipe left unread could fill and stall the run
        process = subprocess.Popen([sys.executable, "-m", "gahb_scale.cli", "run", str(spec_file)], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    # Ray Train resumes from the checkpoints it has registered (listed in its snapshot file);
    # kill as soon as one is registered for any pack.
    deadline = time.monotonic() + 300
    registered = []
    while time.monotonic() < deadline and not registered and process.poll() is None:
        registered = [p for p in packs if (results / "ray" / p.pack_id / "checkpoint_manager_snapshot.json").exists()]
        time.sleep(0.2)
    if sent == signal.SIGKILL:
        os.killpg(process.pid, sent)
    else:
        process.send_signal(sent)
    process.wait(timeout=300)
    err = (tmp_path / "stderr.txt").read_text()
    _end_ray_processes_since(before)
    assert registered, "no checkpoint was registered before the deadline"
    if sent == signal.SIGTERM:
        assert process.returncode == 130 and "interrupted: " in err, err[-3000:]
        assert not (results / "specs" / "micro.running").exists()
        client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("gahb-scale/micro").experiment_id
        (study_run,) = client.search_runs([experiment], "tags.`gahb.role` = 'study'")
        assert study_run.info.status == "KILLED"
    store = StudyStore(str(results))
    assert not all(store.exists(model_path(t.trial_id)) for t in trials)
    assert main(["status", str(spec_file)]) == 0
    status = capsys.readouterr().out
    assert "2 models — 0 trained, 2 part-trained" in status
    told = {int(step) for step in re.findall(rf"part-trained \(resumes at step (\d+)/{steps}\)", status)}
    assert len(told) == 1 and len(re.findall("resumes at step", status)) == 2

    assert main(["run", str(spec_file)]) == 0
    step = told.pop()
    assert f"resumes at step {step}/{steps}, its last checkpoint" in capsys.readouterr().out
    assert not list((results / "ray").glob("train-*"))  # Tune's records of the grids, of no use
    trained = {r["trial_id"]: r for r in store.rows("trials")}
    resumed = [trained[t.trial_id]["resumed_from_step"] for t in trials]
    # both models of the pack continued from the checkpoint `status` named, not from step 0
    assert step >= 50 and resumed == [step, step]
    assert all(trained[t.trial_id]["steps"] == steps for t in trials)
    assert len([r for r in store.rows("pairs") if r["pair_id"] == trials[0].pair_id]) == data["sampling"]["num_samples"]
    # the finished pack's checkpoints (every model's weights and Adam state, twice) and record are dropped
    assert not any((results / "ray" / p.pack_id).exists() or (results / "packs" / f"{p.pack_id}.json").exists()
                   for p in packs)


def test_impossible_resource_request_is_refused_before_any_output(tmp_path, capsys):
    data = yaml.safe_load((ROOT / "studies" / "micro.yaml").read_text())
    data["resources"]["gpus_per_trial"] = 1
    data["storage"] = {"results_dir": str(tmp_path / "out")}
    spec_file = tmp_path / "gpu.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    assert main(["run", str(spec_file)]) == 2
    assert "resources.gpus_per_trial" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
