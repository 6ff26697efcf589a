"""A study whose results live on an S3-protocol server (moto's, started here on 127.0.0.1): training,
Ray Train storage, arrays, tables and report all land there and nothing on the local disk; `query`,
`status` and `report` read them back from the URI; a URI carrying its endpoint as query parameters
works as well as the standard AWS_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image
from servers import s3_server
from study_checks import assert_every_row_once

from gahb_scale.cli import main
from gahb_scale.design.spec_file import load_spec
from gahb_scale.study.store import StudyStore

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        server.create_bucket("gahb")
        yield server


@pytest.fixture
def on_s3(s3, monkeypatch, tmp_path):
    """The S3 server's credentials in the environment; the working directory and home an empty
    folder, so anything written outside the object store shows."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return s3


def micro_spec(folder: Path, results: str) -> Path:
    data = yaml.safe_load((ROOT / "studies" / "micro.yaml").read_text())
    data["storage"] = {"results_dir": results}
    path = folder / "micro.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_study_on_object_storage(on_s3, monkeypatch, tmp_path, capsys):
    s3 = on_s3
    host = s3.endpoint.removeprefix("http://")
    # The endpoint in the URI's own query parameters: the run must not need AWS_ENDPOINT_URL ...
    root = f"s3://gahb/results?endpoint_override={host}&scheme=http"
    with_query = f"s3://gahb/results/micro?endpoint_override={host}&scheme=http"  # the study's folder in that root
    spec_path = micro_spec(tmp_path, "results/micro")  # ... and --results replaces the spec's local root
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert main(["run", str(spec_path), "--results", root]) == 0
    out = capsys.readouterr().out
    assert f"--results '{root}'" in out  # the printed follow-up commands read the same results
    assert "MLflow runs go to the local store" in out

    spec = load_spec(spec_path, with_query)
    rows = assert_every_row_once(with_query, spec)
    keys = s3.keys("gahb", "results/micro/")
    for trial in rows["trials"]:
        assert f"results/micro/models/{trial['trial_id']}/model.pt" in keys
        assert trial["model_path"] == f"models/{trial['trial_id']}/model.pt"  # relative: the folder can move
        # a finished pack's checkpoints are deleted from the bucket (the cluster tests see them there mid-run)
        assert not any(k.startswith(f"results/micro/ray/{trial['pack_id']}/") for k in keys)
    assert not any(k.startswith("results/micro/ray/train-") for k in keys)  # nor is Tune's record of the run
    assert "results/micro/reports/micro/index.html" in keys
    assert any(k.startswith("results/micro/arrays/micro/") for k in keys)
    # nothing on the local disk but the MLflow store the run announced (results are remote)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "micro.yaml"]

    # the same results through the standard variables
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    plain = "s3://gahb/results"
    assert main(["query", "SELECT count(*) AS n FROM samples WHERE study_id = 'micro'", "--results", plain]) == 0
    assert f"\n{len(rows['samples'])}\n" in capsys.readouterr().out
    assert main(["status", str(spec_path), "--results", plain]) == 0
    status = capsys.readouterr().out
    assert "4 trained" in status and "2/2 split pairs compared" in status and "study tables and report written, up to date" in status
    before = StudyStore(f"{plain}/micro").read_bytes("reports/micro/index.html")
    assert main(["report", str(spec_path), "--results", plain]) == 0
    assert "report: s3://gahb/results/micro/reports/micro/index.html" in capsys.readouterr().out
    assert StudyStore(f"{plain}/micro").read_bytes("reports/micro/index.html") == before


def test_missing_results_location_is_one_clear_message(on_s3, capsys):
    assert main(["query", "SELECT 1", "--results", "s3://gahb/nothing-here"]) == 2
    assert "s3://gahb/nothing-here does not exist or is empty" in capsys.readouterr().err


def test_remote_results_need_a_shared_cache_for_folders(on_s3, tmp_path, capsys):
    """A folder's prepared pool is read by file offset, which an object store cannot serve: refused
    up front, naming the field, before anything starts."""
    data = yaml.safe_load((ROOT / "studies" / "micro.yaml").read_text())
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (10 * i, 0, 0)).save(tmp_path / "images" / f"{i}.png")
    data["datasets"] = [{"name": "faces", "kind": "folder", "params": {"path": str(tmp_path / "images")}}]
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path), "--results", "s3://gahb/results/folder"]) == 2
    err = capsys.readouterr().err
    assert "datasets[0].params.cache_dir" in err and "remote" in err
    assert not on_s3.keys("gahb", "results/folder")
