"""The study store's tables: one Parquet file per key, replaced atomically, read back as one table."""

from __future__ import annotations

import math
from pathlib import Path

from gahb_scale.study.store import StudyStore


def rows(study: str, trial: str, values: list[float], **extra) -> list[dict]:
    return [{"study_id": study, "trial_id": trial, "sigma": s, "psnr_out": v, **extra}
            for s, v in zip((5.0, 25.0), values)]


def test_each_key_is_one_file_and_a_rewrite_touches_no_other(tmp_path):
    store = StudyStore(str(tmp_path))
    store.upsert("psnr", rows("s1", "a", [30, 20]) + rows("s1", "b", [31, 21]) + rows("s2", "a", [1, 2]))
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet"))
    assert files == ["tables/psnr/s1/a.parquet", "tables/psnr/s1/b.parquet", "tables/psnr/s2/a.parquet"]
    untouched = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet") if p.stem == "b" or p.parent.name == "s2"}
    store.upsert("psnr", rows("s1", "a", [40, 30]))  # re-analysis of one trial replaces its rows only
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    got = sorted((r["study_id"], r["trial_id"], r["psnr_out"]) for r in store.rows("psnr"))
    assert got == [("s1", "a", 30), ("s1", "a", 40), ("s1", "b", 21), ("s1", "b", 31), ("s2", "a", 1), ("s2", "a", 2)]
    assert not list(tmp_path.rglob("*.tmp"))


def test_files_of_different_versions_read_as_one_table(tmp_path):
    store = StudyStore(str(tmp_path))
    store.upsert("psnr", rows("s", "old", [30, 20]))
    store.upsert("psnr", rows("s", "new", [31, 21], psnr_out_std=0.5))  # a column added later
    table = {(r["trial_id"], r["sigma"]): r for r in store.rows("psnr")}
    assert table[("new", 5.0)]["psnr_out_std"] == 0.5 and table[("old", 5.0)]["psnr_out_std"] is None
    assert store.table_keys("psnr", "s") == ["new", "old"] and store.table_keys("psnr", "t") == []
    assert store.read_table("nothing") is None and store.rows("nothing") == []


def test_study_level_tables_have_one_file_per_study(tmp_path):
    store = StudyStore(str(tmp_path))
    store.upsert("transition", [{"study_id": "s", "n": n, "f_mem": math.nan} for n in (1, 10)])
    store.upsert("transition", [{"study_id": "t", "n": 1, "f_mem": 0.5}])
    store.upsert("transition", [{"study_id": "s", "n": 1, "f_mem": 0.0}])
    assert sorted(p.name for p in (tmp_path / "tables" / "transition").rglob("*.parquet")) == ["study.parquet"] * 2
    assert sorted((r["study_id"], r["n"]) for r in store.rows("transition")) == [("s", 1), ("t", 1)]


def test_a_moved_results_folder_logs_to_mlflow_in_its_new_place_only(tmp_path, monkeypatch):
    """The sqlite store beside the results records absolute artifact locations; copied elsewhere
    and the original removed, logging follows the copy and never recreates the old folder (even in
    the same process, where MLflow keeps each run's artifact store)."""
    import shutil

    from gahb_scale.design.spec_file import load_spec
    from gahb_scale.study.track import StudyTracker

    monkeypatch.chdir(tmp_path)
    spec_file = tmp_path / "micro.yaml"
    spec_file.write_text((Path(__file__).resolve().parents[1] / "studies" / "micro.yaml").read_text())
    spec = load_spec(spec_file, results_root=str(tmp_path / "old"))
    StudyTracker(spec, StudyStore(spec.storage.results_location())).log_report({"index.html": b"first"})
    shutil.copytree(tmp_path / "old", tmp_path / "new")
    shutil.rmtree(tmp_path / "old")

    spec = load_spec(spec_file, results_root=str(tmp_path / "new"))
    tracker = StudyTracker(spec, StudyStore(spec.storage.results_location()))
    tracker.log_report({"index.html": b"second"})
    assert not (tmp_path / "old").exists()
    logged = list((tmp_path / "new" / "micro" / "mlflow-artifacts").rglob("report/index.html"))
    assert [p.read_bytes() for p in logged] == [b"second"]
    location = tracker.client.get_experiment(tracker.experiment_id).artifact_location
    assert location == str(tmp_path / "new" / "micro" / "mlflow-artifacts")


def test_a_results_root_names_each_study_folder_by_its_last_part():
    from gahb_scale.design.spec import StorageSpec, results_below, results_folder_name

    assert results_folder_name("results/paper_cpu") == "paper_cpu"  # studies sharing a folder share it below any root
    assert results_folder_name("s3://b/p/smoke/?endpoint_override=h:9000") == "smoke"
    assert results_below("s3://b/p?endpoint_override=h:9000", "smoke") == "s3://b/p/smoke?endpoint_override=h:9000"
    assert results_below("/data/results", "smoke") == "/data/results/smoke"
    assert StorageSpec(results_dir="s3://b/p/smoke?scheme=http").results_root() == "s3://b/p?scheme=http"
    assert StorageSpec(results_dir="/data/results/smoke").results_root() == "/data/results"


def test_a_study_s_tables_read_each_file_once_and_keep_what_they_write(tmp_path):
    from gahb_scale.study.store import StudyTables

    store = StudyStore(str(tmp_path))
    store.upsert("psnr", rows("s", "b", [31, 21]) + rows("other", "a", [1, 2]))
    reads = []
    read_file = store.read_table_file
    store.read_table_file = lambda relative: reads.append(relative) or read_file(relative)
    tables = StudyTables(store, "s")
    tables.put("psnr", rows("s", "a", [30, 20]))
    assert [(r["trial_id"], r["psnr_out"]) for r in tables.rows("psnr")] == [("a", 30), ("a", 20), ("b", 31), ("b", 21)]
    assert reads == ["tables/psnr/s/b.parquet"]  # the file written here is kept, not read back
    assert tables.rows("psnr") == [r for r in store.rows("psnr") if r["study_id"] == "s"]  # the store's order
    assert tables.key_rows("psnr", "missing") == [] and tables.rows("transition") == []


def test_a_study_table_summarising_nothing_now_loses_its_old_rows(tmp_path):
    # e.g. the spec's pixel-shuffled twin was taken out: its shuffle_psnr rows must not stay in the
    # tables, the report and MLflow
    from gahb_scale.study.store import StudyTables

    store = StudyStore(str(tmp_path))
    store.upsert("shuffle_psnr", [{"study_id": "s", "n": 1, "drop": 3.0}, {"study_id": "t", "n": 1, "drop": 1.0}])
    tables = StudyTables(store, "s")
    tables.put("shuffle_psnr", [])
    assert tables.rows("shuffle_psnr") == [] and StudyTables(store, "s").rows("shuffle_psnr") == []
    assert [r["study_id"] for r in store.rows("shuffle_psnr")] == ["t"]  # another study's are its own
    tables.put("shuffle_psnr", [])  # nothing there: nothing to do
    tables.put("psnr", [])  # a per-model table: rows are replaced per model, never all at once
    assert [r["study_id"] for r in store.rows("shuffle_psnr")] == ["t"] and store.rows("psnr") == []


def test_status_reports_the_resume_of_a_pack_only_where_a_run_resumes_it(tmp_path):
    # a pack with a model taken out of the spec is packed anew by the next run (from step 0), so
    # status must not report its checkpoint
    import json

    from gahb_scale.study.status import checkpoint_steps, recorded_packs

    store = StudyStore(str(tmp_path))
    packs = {"p1": ["a", "gone"], "p2": ["b"], "p3": ["another study's"], "p4": ["done"]}
    for pack_id, members in packs.items():
        store.write_bytes(f"packs/{pack_id}.json", json.dumps(members).encode())
        snapshot = {"latest_checkpoint_result": {"metrics": {"step": 500}}}
        store.write_bytes(f"ray/{pack_id}/checkpoint_manager_snapshot.json", json.dumps(snapshot).encode())
    # p1 holds a model the spec no longer names: packed anew, and left alone (another study
    # sharing the folder may be training it)
    assert recorded_packs(store, {"a", "b", "done"}, {"done"}) == ({"p2": ["b"]}, ["p4"])
    assert checkpoint_steps(store, {"a", "b", "done"}, {"done"}) == {"b": 500}
    # p1's models named again, after p5 began "a" anew: both hold "a", and only the one holding the
    # most training resumes (both would train "a", each saving it): steps x models not yet trained
    store.write_bytes("packs/p5.json", json.dumps(["a", "c"]).encode())
    store.write_bytes("ray/p5/checkpoint_manager_snapshot.json",
                      json.dumps({"latest_checkpoint_result": {"metrics": {"step": 400}}}).encode())
    named = {"a", "b", "c", "gone", "done"}
    assert recorded_packs(store, named, {"done"}) == ({"p1": ["a", "gone"], "p2": ["b"]}, ["p4"])
    assert checkpoint_steps(store, named, {"done"}) == {"a": 500, "gone": 500, "b": 500}
    assert recorded_packs(store, named, {"done", "gone"})[0] == {"p2": ["b"], "p5": ["a", "c"]}  # 800 > 500
    # a model trained already is no overlap: a pack does not save a model that has its file
    assert recorded_packs(store, named, {"done", "a"})[0] == {"p1": ["a", "gone"], "p2": ["b"], "p5": ["a", "c"]}


def test_a_model_run_holds_the_metrics_of_its_latest_analysis(tmp_path, monkeypatch):
    """A model re-analysed with other settings gets the new analysis's metrics as its latest points
    (they were skipped as already logged, so the run showed the old numbers under the new analysis
    id); the same analysis logged again adds no second point; an undefined measure is NaN, as in
    the study run."""
    from mlflow.tracking import MlflowClient

    from gahb_scale.design.spec_file import load_spec
    from gahb_scale.design.trials import expand_trials
    from gahb_scale.study.track import StudyTracker

    monkeypatch.chdir(tmp_path)
    spec_file = tmp_path / "micro.yaml"
    spec_file.write_text((Path(__file__).resolve().parents[1] / "studies" / "micro.yaml").read_text())
    spec = load_spec(spec_file, results_root=str(tmp_path / "results"))
    trial = expand_trials(spec)[0]

    def analysed(key: str, gap: float) -> MlflowClient:
        tracker = StudyTracker(spec, StudyStore(spec.storage.results_location()))  # a run of its own, as `run` is
        tracker.log_analysis(trial, {"analysis_id": key, "psnr_gap": gap, "f_mem": math.nan}, {})
        return tracker.client, tracker.model_run(trial)

    client, run_id = analysed("first", 1.0)
    analysed("first", 5.0)  # a re-run of the same analysis (a killed driver's): already there
    assert [m.value for m in client.get_metric_history(run_id, "psnr_gap")] == [1.0]
    assert math.isnan(client.get_run(run_id).data.metrics["f_mem"])
    analysed("second", 2.0)
    assert client.get_run(run_id).data.metrics["psnr_gap"] == 2.0
