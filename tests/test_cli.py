"""The command line on bad input: one clear message naming the field or file, exit 2, nothing written."""

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from gahb_scale.cli import format_transition, main
from gahb_scale.study.status import MARKER_STALE, running

ROOT = Path(__file__).resolve().parents[1]


def micro(tmp_path, **changes):
    data = yaml.safe_load((ROOT / "studies" / "micro.yaml").read_text())
    data["storage"] = {"results_dir": str(tmp_path / "out")}
    for dotted, value in changes.items():  # "training__lr" sets data["training"]["lr"]
        *path, last = dotted.split("__")
        target = data
        for key in path:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[int(last) if isinstance(target, list) else last] = value
    return data


MALFORMED = [
    ("train_sizes", dict(train_sizes=[])),
    ("training.lr", dict(training__lr=-1)),
    ("sampling.beta", dict(sampling__beta=1.5)),
    ("sampling.sigma_L", dict(sampling__sigma_L=2.0)),
    ("datasets[0].kind", dict(datasets__0__kind="mnist")),
    ("datasets[0].params", dict(datasets__0__params={"alpha": 2})),
    ("architectures[0].kind", dict(architectures__0__kind="transformer")),
    ("architectures[0].params", dict(architectures__0__params={"depth": 3})),
    ("image_size", dict(image_size=7)),
    ("resources.gpus_per_trial", dict(resources__gpus_per_trial=1.5)),
    ("resources.max_concurrent_trials", dict(resources__max_concurrent_trials=0)),
    ("training.noise_schedule", dict(training__noise_schedule="cosine")),
]


@pytest.mark.parametrize("field, changes", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_spec_is_rejected_without_output(tmp_path, capsys, field, changes):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(micro(tmp_path, **changes)))
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_dataset_folder_is_named(tmp_path, capsys):
    data = micro(tmp_path)
    data["datasets"] = [{"name": "faces", "kind": "folder", "params": {"path": str(tmp_path / "no-such-folder")}}]
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(data))
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "datasets[0].params.path" in err and "no-such-folder" in err


def test_unreadable_yaml_and_missing_file(tmp_path, capsys):
    spec = tmp_path / "broken.yaml"
    spec.write_text("name: x\n  image_size: [16\n")
    assert main(["validate", str(spec)]) == 2
    assert "line" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml" in capsys.readouterr().err


def test_validate_prints_the_trial_grid(capsys):
    assert main(["validate", str(ROOT / "studies" / "smoke.yaml")]) == 0
    out = capsys.readouterr().out
    assert "8 trials" in out


def test_query_without_results_is_a_clear_error(tmp_path, capsys):
    assert main(["query", "SELECT 1", "--results", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("not a results folder")
    smoke = str(ROOT / "studies" / "smoke.yaml")
    for argv in (["query", "SELECT 1"], ["status", smoke], ["report", smoke], ["run", smoke]):
        assert main([*argv, "--results", str(tmp_path / "a-file")]) == 2  # not a traceback
        assert "a-file is a file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing written


def test_results_override_is_checked_like_the_spec(tmp_path, capsys, monkeypatch):
    """An empty --results (an unset shell variable) would write into the current directory; and
    --results must not hide a malformed storage section."""
    monkeypatch.chdir(tmp_path)
    smoke = str(ROOT / "studies" / "smoke.yaml")
    assert main(["run", smoke, "--results", ""]) == 2
    assert "--results is empty" in capsys.readouterr().err  # the option given, not the spec's field
    data = yaml.safe_load((ROOT / "studies" / "smoke.yaml").read_text())
    data["storage"] = "somewhere"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    assert main(["status", str(tmp_path / "bad.yaml"), "--results", str(tmp_path / "r")]) == 2
    assert "storage" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing written


def test_an_unreachable_object_store_is_one_message(tmp_path, capsys, monkeypatch):
    for key, value in {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
                       "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    assert main(["status", str(ROOT / "studies" / "smoke.yaml"), "--results", "s3://no-bucket/results"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def _transition_row(**changes) -> dict:
    nan = float("nan")
    row = dict(dataset="d", architecture="a", n=1, train_psnr=30.0, test_psnr=20.0, psnr_gap=10.0, psnr_gap_chance=-0.5,
               nn_cosine_centered=0.99, f_mem=nan, f_mem_low=nan, f_mem_high=nan, f_mem_scale_free=nan,
               f_mem_scale_free_low=nan, f_mem_scale_free_high=nan, memorizer_distance=0.01,
               memorizer_distance_bias_free=0.005, ab_cosine=0.5,
               ab_cosine_centered=0.1, ab_l2=0.2, ab_basis_overlap=0.5, effective_dim=3.0, symmetry_error=0.4,
               symmetry_error_memorizer=nan, symmetry_error_gaussian=nan, f_mem_chance=nan, f_mem_scale_free_chance=nan,
               nn_cosine_centered_chance=0.875, ab_cosine_chance=0.8, ab_cosine_centered_chance=0.3, ab_l2_chance=0.25,
               ab_basis_overlap_chance=0.0078125, switch_n=None, capped_samples=0, diverged_samples=0)
    return {**row, **changes}


def test_transition_table_says_undefined_for_n_below_2():
    text = format_transition([_transition_row(), _transition_row(n=10, f_mem=0.25, f_mem_low=0.1, f_mem_high=0.4,
                                                                 f_mem_chance=0.125)])
    assert text.count("undefined (N<2)") == 1  # N = 1 only
    assert "0.25 [0.10, 0.40]" in text
    assert "0.12" in text and "0.300" in text and "-0.50" in text  # chance levels beside the measures


def test_printed_transition_table_fits_120_columns_for_every_study():
    """The widest names of the studies in studies/, with the widest values a column can hold."""
    specs = [yaml.safe_load(path.read_text()) for path in (ROOT / "studies").glob("*.yaml")]
    dataset = max((d["name"] for spec in specs for d in spec["datasets"]), key=len)
    arch = max((a["name"] for spec in specs for a in spec["architectures"]), key=len)
    row = _transition_row(dataset=dataset, architecture=arch, n=100000, psnr_gap=-12.34, psnr_gap_chance=-12.34,
                          f_mem=0.25, f_mem_low=0.1, f_mem_high=0.4, f_mem_chance=0.5, ab_cosine_centered=-0.123,
                          switch_n=31622.8)
    lines = format_transition([row]).splitlines()
    assert max(map(len, lines)) <= 120, "\n".join(lines)


@pytest.fixture
def a_table(tmp_path) -> Path:
    from gahb_scale.study.store import StudyStore

    StudyStore(str(tmp_path / "results")).upsert("transition", [
        {"study_id": "s", "n": 1, "f_mem": float("nan"), "dataset": "d, with a comma"},
        {"study_id": "s", "n": 4, "f_mem": 0.25, "dataset": "d, with a comma"}])
    return tmp_path / "results"


def test_query_shows_floats_to_six_significant_digits(a_table, capsys):
    sql = ("SELECT n, f_mem, f_mem * 1e-6 AS small, round(86.54, 1) AS rounded, n * 1234567.0::DOUBLE AS seconds, "
           "999999.95::DOUBLE AS almost, CASE WHEN n > 1 THEN 'x' END AS null FROM transition ORDER BY n")
    assert main(["query", sql, "--results", str(a_table)]) == 0
    assert capsys.readouterr().out.splitlines()[-3:-1] == ["1    n/a      n/a     86.5  1234567  1000000   n/a",
                                                           "4   0.25  2.5e-07     86.5  4938268  1000000     x"]
    assert main(["query", "SELECT 1.5 AS k, [1.5, 2.0] AS l", "--results", str(a_table), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"k": 1.5, "l": [1.5, 2.0]}]


def test_query_gives_csv_and_json_for_scripts(a_table, capsys):
    import csv
    import json

    sql = "SELECT n, f_mem, dataset FROM transition ORDER BY n"
    assert main(["query", sql, "--results", str(a_table), "--format", "csv"]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows[0] == ["n", "f_mem", "dataset"] and rows[2] == ["4", "0.25", "d, with a comma"] and len(rows) == 3
    assert main(["query", sql, "--results", str(a_table), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 1, "f_mem": None, "dataset": "d, with a comma"},
                                                   {"n": 4, "f_mem": 0.25, "dataset": "d, with a comma"}]


def test_a_study_in_two_folders_under_the_root_is_noted(a_table, capsys):
    """A copy of a study's folder kept beside it counts its rows twice: the query says so."""
    import shutil

    shutil.copytree(a_table, a_table.parent / "root" / "copy")
    shutil.copytree(a_table, a_table.parent / "root" / "original")
    root = a_table.parent / "root"
    assert main(["query", "SELECT count(*) AS rows FROM transition", "--results", str(root)]) == 0
    out, err = capsys.readouterr()
    assert "4" in out and f"study s's tables lie in 2 results folders under {root} (copy, original)" in err
    assert main(["query", "SELECT count(*) AS rows FROM transition", "--results", str(root / "copy")]) == 0
    assert not capsys.readouterr().err
    assert main(["query", "SELECT count(*) AS rows FROM transition", "--results", str(a_table)]) == 0
    assert not capsys.readouterr().err


@pytest.mark.parametrize("sql", ["", "  ", ";", "-- only a comment"])
def test_a_query_without_a_statement_is_a_clear_error(a_table, sql, capsys):
    assert main(["query", sql, "--results", str(a_table)]) == 2
    assert "holds no statement" in capsys.readouterr().err


def test_a_query_of_several_statements_is_refused(a_table, capsys):
    """DuckDB would run them all and show only the last one's rows."""
    assert main(["query", "SELECT 1; SELECT n FROM transition", "--results", str(a_table)]) == 2
    assert "the query holds 2 statements; give one" in capsys.readouterr().err


def test_a_query_writes_no_file(a_table, tmp_path, capsys):
    """COPY ... TO would put files where a query was only meant to read: it is refused."""
    target = tmp_path / "copied.csv"
    assert main(["query", f"COPY transition TO '{target}'", "--results", str(a_table)]) == 2
    assert "query failed" in capsys.readouterr().err and not target.exists()
    assert main(["query", "SELECT count(*) AS rows FROM transition", "--results", str(a_table)]) == 0  # reads still


def test_query_into_a_pipe_that_closes_early_exits_0_quietly(a_table):
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "gahb_scale.cli", "query", "SELECT * FROM range(300000)",
                                "--results", str(a_table), "--format", "csv"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stdout.readline() == b"range\n"
    process.stdout.close()  # like `| head -1`
    assert process.wait(timeout=120) == 0
    assert process.stderr.read() == b""


def test_report_before_any_analysis_says_what_to_run(tmp_path, capsys):
    from gahb_scale.study.store import StudyStore, spec_path

    spec = tmp_path / "micro.yaml"
    spec.write_text(yaml.safe_dump(micro(tmp_path)))
    StudyStore(str(tmp_path / "out")).write_bytes(spec_path("micro"), spec.read_bytes())  # a run got this far
    assert main(["report", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "study micro" in err and "gahb-scale run" in err
    assert "is trained yet" in err and "analyses again without retraining" not in err  # none is trained
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["specs"]


@pytest.mark.parametrize("command", ["status", "report"])
def test_a_folder_without_the_study_is_named_not_reported_empty(tmp_path, capsys, command):
    """--results is the results root: the study is in <root>/<its folder's name>. A root holding
    nothing of it is an error naming the folder looked in, not "0 trained" or advice to run."""
    spec = tmp_path / "micro.yaml"
    spec.write_text(yaml.safe_dump(micro(tmp_path)))
    (tmp_path / "results" / "other").mkdir(parents=True)
    assert main([command, str(spec), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'results' / 'out'} holds no results of study micro" in err
    assert "0 trained" not in err and "gahb-scale run" not in err
    assert main([command, str(spec)]) == 2  # the spec's own folder, never created
    assert f"{tmp_path / 'out'} holds no results of study micro" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["micro.yaml", "results"]  # nothing written


def test_status_and_report_read_results_without_the_dataset_folder(tmp_path, capsys):
    """status and report need only the results (e.g. from a laptop, of a cluster's CelebA study):
    a dataset folder absent here is no error for them; run still refuses it."""
    from gahb_scale.study.store import StudyStore, spec_path

    spec = tmp_path / "faces.yaml"
    spec.write_text(yaml.safe_dump(micro(tmp_path, datasets=[{"name": "faces", "kind": "folder",
                                                              "params": {"path": str(tmp_path / "absent")}}])))
    StudyStore(str(tmp_path / "out")).write_bytes(spec_path("micro"), spec.read_bytes())
    assert main(["status", str(spec)]) == 0
    out, err = capsys.readouterr()
    assert "4 models — 0 trained" in out and f"dataset folder {tmp_path / 'absent'} is not here" in err
    assert main(["report", str(spec)]) == 2
    assert "no model of this spec" in capsys.readouterr().err  # the study's own words, not the folder's
    assert main(["run", str(spec)]) == 2
    assert "absent" in capsys.readouterr().err


def test_results_names_the_root_and_a_study_folder_given_still_works(tmp_path, capsys):
    from gahb_scale.study.store import StudyStore, spec_path

    spec = tmp_path / "micro.yaml"
    spec.write_text(yaml.safe_dump(micro(tmp_path)))
    StudyStore(str(tmp_path / "root" / "out")).write_bytes(spec_path("micro"), spec.read_bytes())
    assert main(["status", str(spec), "--results", str(tmp_path / "root")]) == 0
    out, err = capsys.readouterr()
    assert f"study micro ({tmp_path / 'root' / 'out'}): 4 models — 0 trained" in out and not err
    # the study's own folder as --results (its meaning up to version 0.5): used, with a note
    assert main(["status", str(spec), "--results", str(tmp_path / "root" / "out")]) == 0
    out, err = capsys.readouterr()
    assert f"study micro ({tmp_path / 'root' / 'out'})" in out
    assert f"names the results root, the folder above it (here: --results {tmp_path / 'root'})" in err


def test_validate_previews_a_spec_whose_data_folder_is_missing(tmp_path, capsys, monkeypatch):
    """The grid and budget do not depend on the images: shown, with the missing folder named and
    `run` said to refuse; `run` still refuses, writing nothing."""
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(ROOT / "studies" / "memorization_celeba40_gpu.yaml")]) == 0
    out = capsys.readouterr().out
    assert "24 trials" in out and "training budget: 488,282 steps" in out
    assert "dataset folder data/celeba/img_align_celeba does not exist" in out and "will refuse" in out
    assert main(["run", str(ROOT / "studies" / "memorization_celeba40_gpu.yaml")]) == 2
    assert "data/celeba/img_align_celeba" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    # two datasets reading one missing folder: one note
    assert main(["validate", str(ROOT / "studies" / "shuffle_gpu.yaml")]) == 0
    assert capsys.readouterr().out.count("note: dataset folder") == 1


def _folder_of(tmp_path, count: int, copies: int) -> Path:
    """`count` distinct grey images and `copies` exact copies of the first one, saved after it."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "faces"
    root.mkdir()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24, 24), dtype=np.uint8) for _ in range(count)]
    for i, image in enumerate(images + [images[0]] * copies):
        Image.fromarray(image).save(root / f"{i:03d}.png")
    return root


def test_a_pool_too_small_after_removing_duplicates_is_refused_before_anything_runs(tmp_path, capsys):
    folder = _folder_of(tmp_path, count=9, copies=3)  # 12 files, 9 distinct: N = 4 needs 2 x 4 + 2 = 10
    spec = tmp_path / "faces.yaml"
    spec.write_text(yaml.safe_dump(micro(tmp_path, datasets=[{"name": "faces", "kind": "folder",
                                                              "params": {"path": str(folder)}}],
                                         test_images=2)))
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "'faces'" in err and "9 images after removing 3 near-duplicates" in err and "10" in err
    assert not (tmp_path / "out").exists()  # not even the prepared pool's cache
    # keeping duplicates (the spec option) makes the pool large enough
    from gahb_scale.design.datasets import prepare_datasets
    from gahb_scale.design.spec_file import load_spec

    spec.write_text(yaml.safe_dump(micro(tmp_path, datasets=[
        {"name": "faces", "kind": "folder", "params": {"path": str(folder), "near_duplicate_threshold": None}}],
        test_images=2)))
    (row,) = prepare_datasets(load_spec(spec)).rows
    assert (row["pool_images"], row["duplicates_removed"]) == (12, 0)


def test_a_folder_changed_since_its_models_were_trained_is_refused(tmp_path, capsys):
    """An image added to a folder changes every split pair under the same trial ids: the trained
    models' training images and measures would no longer match. run refuses, naming the dataset;
    with no model of it trained yet, the new pool is simply used."""
    from PIL import Image

    from gahb_scale.design.datasets import prepare_datasets
    from gahb_scale.design.spec_file import load_spec
    from gahb_scale.design.trials import expand_trials
    from gahb_scale.study.store import StudyStore, model_path

    folder = _folder_of(tmp_path, count=12, copies=0)
    spec = tmp_path / "faces.yaml"
    spec.write_text(yaml.safe_dump(micro(tmp_path, datasets=[{"name": "faces", "kind": "folder",
                                                              "params": {"path": str(folder)}}], test_images=2)))
    store = StudyStore(str(tmp_path / "out"))
    store.upsert("datasets", prepare_datasets(load_spec(spec)).rows)  # as the run that trained wrote them
    store.upsert("spec_models", [trial.as_row() for trial in expand_trials(load_spec(spec))])
    store.write_bytes(model_path(expand_trials(load_spec(spec))[0].trial_id), b"a trained model")
    Image.open(folder / "000.png").transpose(Image.Transpose.ROTATE_90).save(folder / "012.png")
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "datasets[0] ('faces')" in err and "pool of 12 images then, 13 now" in err and "Traceback" not in err
    assert sorted(p for p in tmp_path.rglob("*")) == before
    (folder / "012.png").unlink()
    (folder / "011.png").rename(folder / "renamed.png")  # as many images, another pool order
    assert main(["run", str(spec)]) == 2 and "12 images then, 12 now" in capsys.readouterr().err
    from types import SimpleNamespace

    from gahb_scale.errors import UserInputError
    from gahb_scale.study.status import check_pools_unchanged
    from gahb_scale.study.store import pool_path

    loaded = load_spec(spec)
    trials, now, last = expand_trials(loaded), prepare_datasets(loaded), store.rows("datasets")
    trial = trials[0].trial_id

    def check(before, trained=frozenset(), packed=frozenset()):
        check_pools_unchanged(store, SimpleNamespace(trials=trials, trained=set(trained)), now, before, set(packed))

    check(last)  # nothing trained: used as it is
    check(now.rows, {trial})  # unchanged
    check([{**row, "pool_files_sha256": None} for row in now.rows], {trial})  # a table from before the hash
    # a model trained, or part-trained (a checkpoint), before its pool was kept beside it: the
    # study's last run stands in
    for trained, packed in (({trial}, set()), (set(), {trial})):
        with pytest.raises(UserInputError, match="1 of the spec's models began training on it"):
            check(last, trained, packed)
        check([], trained, packed)  # no witness at all

    # the pool a model began on, kept beside it, outranks the study's rows, whichever study began
    # it: a study sharing the results folder, or a run of this study on the changed folder (another
    # N) that rewrote its datasets row, must not make its models pass on another pool
    def began_on(row):
        store.write_bytes(pool_path(trial), json.dumps({key: row[key] for key in ("pool_images", "pool_files_sha256")}).encode())

    began_on(last[0])
    for before, trained, packed in (([], set(), {trial}), ([], {trial}, set()), (now.rows, {trial}, set())):
        with pytest.raises(UserInputError, match="1 of the spec's models began training on it"):
            check(before, trained, packed)
    began_on(now.rows[0])
    check(last, {trial}, {trial})  # the folder as the model began on it, whatever the study's last run saw


def test_models_of_a_folder_changed_since_are_refused_to_a_study_sharing_them(tmp_path, capsys):
    """Each model keeps the pool it began training on beside it, so a second study in the same
    results folder (the same trial ids; a datasets table that never saw the old pool) may not
    analyse those models on the folder as it is now."""
    from PIL import Image

    folder = _folder_of(tmp_path, count=12, copies=0)
    data = micro(tmp_path, datasets=[{"name": "faces", "kind": "folder", "params": {"path": str(folder)}}],
                 train_sizes=[1], test_images=2)
    (tmp_path / "first.yaml").write_text(yaml.safe_dump(data))
    assert main(["run", str(tmp_path / "first.yaml")]) == 0
    pools = [json.loads(p.read_text()) for p in (tmp_path / "out" / "models").glob("*/pool.json")]
    from gahb_scale.study.store import StudyStore

    (row,) = StudyStore(str(tmp_path / "out")).rows("datasets")
    assert len(pools) == 2
    assert all(pool == {"pool_images": 12, "pool_files_sha256": row["pool_files_sha256"]} for pool in pools)
    Image.open(folder / "000.png").transpose(Image.Transpose.ROTATE_90).save(folder / "012.png")
    (tmp_path / "second.yaml").write_text(yaml.safe_dump({**data, "name": "second"}))
    capsys.readouterr()
    assert main(["run", str(tmp_path / "second.yaml")]) == 2
    err = capsys.readouterr().err
    assert "2 of the spec's models began training on it (pool of 12 images then, 13 now)" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "specs" / "second.yaml").exists()


def test_a_corrupt_image_is_named_before_anything_runs_or_is_written(tmp_path, capsys):
    folder = _folder_of(tmp_path, count=12, copies=0)
    (folder / "005.png").write_bytes(b"not a png at all")
    spec = tmp_path / "faces.yaml"
    spec.write_text(yaml.safe_dump(micro(tmp_path, datasets=[{"name": "faces", "kind": "folder",
                                                              "params": {"path": str(folder)}}])))
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert str(folder / "005.png") in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_failed_trial_is_told_in_one_line_from_the_exception_ray_wraps():
    """Ray's layers as a failed Train run reaches the Tune driver (pickled, as Tune keeps it): the
    trial's task error, around the worker group's error, around rank 1's exception with its trace."""
    from ray import cloudpickle
    from ray.exceptions import RayTaskError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    from gahb_scale.errors import UserInputError
    from gahb_scale.study.progress import failure_reason

    worker = UserExceptionWithTraceback(UserInputError("image folder not found: /data/faces"),
                                        "Traceback (most recent call last):\n  ...\nUserInputError: ...")
    group = WorkerGroupError("[Rank 1 Error Snippet]: ...", {3: RuntimeError("a later rank"), 1: worker})
    trial = cloudpickle.loads(cloudpickle.dumps(RayTaskError("tune_trial", "Traceback ...", group)))
    assert failure_reason(trial) == "gahb_scale.errors.UserInputError: image folder not found: /data/faces"
    assert failure_reason(ValueError("two\nlines")) == "ValueError: two lines"
    assert failure_reason("Failure # 1\nray.tune.TuneError: no resources\n") == "ray.tune.TuneError: no resources"
    assert failure_reason(None) == "no error was saved"


def test_a_second_run_of_a_running_study_is_refused_and_status_says_it_runs(tmp_path, capsys):
    """Two runs of one study would train the same models: while a run's marker names a live process
    the second is refused before it writes anything, and `status` says who runs it. A marker left by a
    process that is gone (a run killed with no clean-up) holds nothing up."""
    import json
    import socket
    import subprocess
    import sys

    from gahb_scale.study.store import StudyStore, run_marker_path, spec_path

    spec = tmp_path / "micro.yaml"
    spec.write_text(yaml.safe_dump(micro(tmp_path)))
    store = StudyStore(str(tmp_path / "out"))
    store.write_bytes(spec_path("micro"), spec.read_bytes())
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        marker = {"host": socket.gethostname(), "pid": holder.pid, "started": "2026-12-07 09:00:00", "beat": time.time()}
        store.write_bytes(run_marker_path("micro"), json.dumps(marker).encode())
        before = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "out").rglob("*"))
        assert main(["run", str(spec)]) == 2
        err = capsys.readouterr().err
        assert f"study micro is being run now, by process {holder.pid} on {socket.gethostname()}" in err
        assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "out").rglob("*")) == before
        assert main(["status", str(spec)]) == 0
        assert f"running now: process {holder.pid} on {socket.gethostname()}, since 2026-12-07 09:00:00" in \
            capsys.readouterr().out
        assert main(["report", str(spec)]) == 2  # the running study's tables have their writer
        assert "that run writes its report" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert main(["status", str(spec)]) == 0
    assert "running now" not in capsys.readouterr().out
    # a run on another machine: its process cannot be looked up from here, its marker's beat can
    for age, runs in ((30, True), (MARKER_STALE + 30, False)):
        marker = {"host": "elsewhere", "pid": 1, "started": "2026-12-07 09:00:00", "beat": time.time() - age}
        store.write_bytes(run_marker_path("micro"), json.dumps(marker).encode())
        assert main(["status", str(spec)]) == 0
        assert ("running now: process 1 on elsewhere" in capsys.readouterr().out) == runs
    # on this machine too, a marker long unrewritten is a dead run's, though its process id lives
    # (given to another process since)
    for age, runs in ((30, True), (MARKER_STALE + 30, False)):
        marker = {"host": socket.gethostname(), "pid": os.getppid(), "started": "2026-12-07 09:00:00",
                  "beat": time.time() - age}
        store.write_bytes(run_marker_path("micro"), json.dumps(marker).encode())
        assert (running(store, "micro") is not None) == runs


def test_a_run_rewrites_its_marker_while_it_runs_and_removes_it_at_the_end(tmp_path, monkeypatch):
    import json
    import socket

    from gahb_scale.study import status
    from gahb_scale.study.store import StudyStore, run_marker_path

    monkeypatch.setattr(status, "MARKER_BEAT", 0.05)
    store = StudyStore(str(tmp_path / "out"))
    with status.marked_running(store, "micro"):
        first = json.loads(store.read_bytes(run_marker_path("micro")))
        deadline = time.monotonic() + 30
        while json.loads(store.read_bytes(run_marker_path("micro")))["beat"] == first["beat"]:
            assert time.monotonic() < deadline, "the marker was not rewritten"
            time.sleep(0.05)
        assert first["pid"] == os.getpid() and first["host"] == socket.gethostname()
    assert not store.exists(run_marker_path("micro")) and running(store, "micro") is None

    monkeypatch.setattr(status, "MARKER_BEAT", 60.0)
    with status.marked_running(store, "micro"):  # its marker deleted by hand meanwhile: no error
        store.fs.delete_file(store.path(run_marker_path("micro")))
    with status.marked_running(store, "micro"):  # another run's marker there at the end: left alone
        store.write_bytes(run_marker_path("micro"), b'{"token": "another run"}')
    assert store.read_bytes(run_marker_path("micro")) == b'{"token": "another run"}'
