"""Where MLflow runs go: a tracking server whose artifacts live on S3 (the cluster set-up), and the
store on this machine used when results are remote and no tracking URI is given.

The servers are real (moto's S3 server, `mlflow server`), started on 127.0.0.1 by tests/servers.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from servers import mlflow_server, s3_server

from gahb_scale.cli import main
from gahb_scale.design.spec_file import load_spec
from gahb_scale.design.trials import expand_trials
from gahb_scale.study.store import StudyStore
from gahb_scale.study.track import StudyTracker, store_notice, tracking_uri, ui_command

ROOT = Path(__file__).resolve().parents[1]
KIND = ("mlflow.experimentKind", "custom_model_development")


def micro_spec(folder: Path, storage: dict) -> Path:
    data = yaml.safe_load((ROOT / "studies" / "micro.yaml").read_text())
    data["storage"] = storage
    path = folder / "micro.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A home folder of the test's own, and no tracking URI from the environment."""
    folder = tmp_path / "home"
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: folder))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return folder


@pytest.fixture
def s3_results(home, tmp_path, monkeypatch) -> StudyStore:
    # pyarrow asks AWS for a bucket's region unless an endpoint is named; nothing here reads the bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    return StudyStore("s3://bucket/results/micro")


def test_remote_results_without_tracking_uri_use_a_store_in_the_home_folder(home, s3_results, tmp_path,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(micro_spec(tmp_path, {"results_dir": s3_results.results}))
    db = home / ".gahb-scale" / "mlflow" / "mlflow.db"
    assert tracking_uri(spec, s3_results) == f"sqlite:///{db}"
    notice = store_notice(spec, s3_results)
    assert f"sqlite:///{db}" in notice and "s3://bucket/results/micro" in notice
    assert "storage.mlflow_tracking_uri" in notice and "MLFLOW_TRACKING_URI" in notice

    tracker = StudyTracker(spec, s3_results)
    tracker.log_report({"index.html": b"<html></html>"})
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags[KIND[0]] == KIND[1]
    assert Path(experiment.artifact_location) == home / ".gahb-scale" / "mlflow" / "artifacts"
    run_artifacts = Path(tracker.client.get_run(tracker.parent_id).info.artifact_uri)
    assert run_artifacts.is_relative_to(experiment.artifact_location)
    assert (run_artifacts / "report" / "index.html").read_bytes() == b"<html></html>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "micro.yaml"]  # nothing in the current directory


def test_a_given_tracking_uri_or_local_results_need_no_notice(home, s3_results, tmp_path, monkeypatch):
    server = "http://tracking.example:5000"
    spec = load_spec(micro_spec(tmp_path, {"results_dir": s3_results.results, "mlflow_tracking_uri": server}))
    assert tracking_uri(spec, s3_results) == server and store_notice(spec, s3_results) is None

    spec = load_spec(micro_spec(tmp_path, {"results_dir": s3_results.results}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    assert tracking_uri(spec, s3_results) == server and store_notice(spec, s3_results) is None
    monkeypatch.delenv("MLFLOW_TRACKING_URI")

    local = StudyStore(str(tmp_path / "results"))
    assert tracking_uri(spec, local) == f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    assert store_notice(spec, local) is None
    assert ui_command(server) == f"open {server} in a browser"
    assert ui_command("sqlite:///x/mlflow.db") == f"{Path(sys.executable).parent}/mlflow ui --backend-store-uri sqlite:///x/mlflow.db"
    monkeypatch.setattr(sys, "executable", "/nowhere/python3")  # no mlflow beside it: its module
    assert ui_command("sqlite:///x/mlflow.db") == "/nowhere/python3 -m mlflow ui --backend-store-uri sqlite:///x/mlflow.db"
    assert ui_command("sqlite:////it's here/mlflow.db").endswith(  # pasted as printed
        "--backend-store-uri 'sqlite:////it'\"'\"'s here/mlflow.db'")


def test_an_experiment_made_without_the_kind_tag_gets_it(home, tmp_path):
    spec = load_spec(micro_spec(tmp_path, {"results_dir": str(tmp_path / "results")}))
    store = StudyStore(spec.storage.results_location())
    (tmp_path / "results").mkdir()
    client = MlflowClient(tracking_uri(spec, store))
    experiment_id = client.create_experiment("gahb-scale/micro")
    assert KIND[0] not in client.get_experiment(experiment_id).tags

    assert StudyTracker(spec, store).experiment_id == experiment_id
    assert client.get_experiment(experiment_id).tags[KIND[0]] == KIND[1]


@pytest.mark.integration
def test_micro_study_logs_to_a_tracking_server_that_keeps_artifacts_on_s3(home, tmp_path, monkeypatch, capsys):
    with s3_server(tmp_path) as s3:
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        bucket = s3.create_bucket("gahb-mlflow")
        with mlflow_server(tmp_path, f"sqlite:///{tmp_path / 'server.db'}", f"s3://{bucket}/mlflow", s3.env) as uri:
            results = tmp_path / "results" / "micro"
            spec_path = micro_spec(tmp_path, {"results_dir": str(results), "mlflow_tracking_uri": uri})
            assert main(["run", str(spec_path)]) == 0
            out = capsys.readouterr().out

            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name("gahb-scale/micro")
            assert f"MLflow UI:         {uri}/#/experiments/{experiment.experiment_id}/runs" in out  # the runs table
            assert experiment.tags[KIND[0]] == KIND[1]
            assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server's choice, not ours
            runs = client.search_runs([experiment.experiment_id])
            parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
            children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
            n_models = len(expand_trials(load_spec(spec_path)))
            assert len(parents) == 1 and len(children) == n_models
            study = parents[0].info.run_id
            assert {c.data.tags["mlflow.parentRunId"] for c in children} == {study}

            expected = {study: ["phase_transition.png", "spec.yaml", "report/index.html"]}
            expected |= {c.info.run_id: ["samples.png", "psnr_curves.png", "eigen_spectrum.png", "eigenvectors.png"]
                         for c in children}
            assert {f.path for f in client.list_artifacts(study, "report")} >= {"report/index.html"}
            keys = set(s3.keys(bucket, "mlflow/"))
            for run_id, names in expected.items():
                listed = {f.path for f in client.list_artifacts(run_id)}
                for name in names:
                    assert name.split("/")[0] in listed, (run_id, name)
                    assert f"mlflow/{experiment.experiment_id}/{run_id}/artifacts/{name}" in keys, (run_id, name)

    assert not (results / "mlflow.db").exists() and not (results / "mlflow-artifacts").exists()
    assert not (home / ".gahb-scale").exists()  # the server was used, not this machine's store
