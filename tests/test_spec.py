"""The study spec: loading, validation errors that name their field, trial grid and stable ids."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gahb_scale.data.image_folder import NEAR_DUPLICATE_THRESHOLD
from gahb_scale.dataset_kinds import DATASET_KINDS
from gahb_scale.design.spec import ArchitectureSpec, StudySpec
from gahb_scale.design.spec_file import SpecError, load_spec, parse_spec
from gahb_scale.design.trials import Trial, describe_trials, expand_trials
from gahb_scale.errors import UserInputError

STUDIES = Path(__file__).resolve().parents[1] / "studies"

# A small valid spec the malformed cases start from (architecture built on the CPU in milliseconds).
BASE = {
    "name": "t",
    "image_size": 12,
    "datasets": [{"name": "discs", "kind": "discs"}],
    "architectures": [{"name": "u", "kind": "unet", "params": {"width": 4, "blocks": 1}}],
    "train_sizes": [1, 4],
}


def write(tmp_path: Path, data, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def variant(**changes) -> dict:
    """BASE with top-level keys replaced (value None: key removed)."""
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def ids_by_key(spec: StudySpec) -> dict[tuple, str]:
    return {(t.dataset.name, t.architecture.name, t.n, t.pair, t.seed, t.split): t.trial_id
            for t in expand_trials(spec)}


# ---------------------------------------------------------------------------------------------
# shipped specs


@pytest.mark.parametrize("name, trials", [("smoke", 8), ("micro", 4)])
def test_shipped_studies_load(name, trials):
    spec = load_spec(STUDIES / f"{name}.yaml")
    assert spec.name == name
    assert len(expand_trials(spec)) == trials
    assert spec.storage.results_dir == f"results/{name}"
    for arch in spec.architectures:
        assert spec.image_size % arch.size_multiple == 0
        assert arch.num_parameters > 0


PAPER_STUDIES = sorted(p.stem for p in STUDIES.glob("*_[cg]pu*.yaml"))


@pytest.mark.parametrize("name", PAPER_STUDIES)
def test_paper_studies_validate(name, tmp_path):
    """Every shipped paper study is valid once its image folders exist (users supply the data)."""
    data = yaml.safe_load((STUDIES / f"{name}.yaml").read_text())
    for dataset in data["datasets"]:
        if dataset["kind"] == "folder":
            dataset["params"]["path"] = str(tmp_path)
    spec = parse_spec(data, name)
    assert spec.name == name
    assert name.endswith("_cpu") == (spec.resources.gpus_per_trial == 0)
    assert expand_trials(spec)


def _without_data(name: str, folder: Path):
    data = yaml.safe_load((STUDIES / f"{name}.yaml").read_text())
    for dataset in data["datasets"]:
        if dataset["kind"] == "folder":
            dataset["params"]["path"] = str(folder)
    return parse_spec(data, name)


@pytest.mark.parametrize("name", [n for n in PAPER_STUDIES if "_gpu" in n])
def test_gpu_studies_state_their_budget_and_cite_a_measured_throughput(name, tmp_path):
    """A `*_gpu` spec trains with its source's budget; a cheaper one says so in its name and text."""
    spec = _without_data(name, tmp_path)
    text = (STUDIES / f"{name}.yaml").read_text().replace("\n# ", " ")  # comment lines joined
    t = spec.training
    if name.endswith("_short"):
        assert spec.description.startswith("SHORT BUDGET") and text.startswith("# SHORT BUDGET")
        assert "What it changes" in text
    elif name.startswith("transition"):  # a showcase sized from the measured throughput, not a paper budget
        assert "at most 4 minutes" in text and "Not yet measured on a GPU" in text
    elif name.startswith("memorization_time"):  # Bonnaire et al.'s longest runs
        assert (t.steps, t.batch_size) == (2_000_000, 512)
    else:  # the authors': 1000 epochs of 250k images at batch 512, lr halved every 100 epochs
        assert (t.steps, t.batch_size, t.lr, t.lr_halve_every) == (488_282, 512, 1e-3, 48_829)
        assert "1000 epochs of 250" in spec.training.budget()
    assert "measured 4,018 img/s" in text and "benchmarks/gpu_cost.py" in text
    for dataset in spec.datasets:
        if dataset.kind == "folder":  # the authors' recipe: their crop, duplicates removed
            assert dataset.params["crop"] == ("top_left" if "lsun" in dataset.name else "celeba")
            assert dataset.params["near_duplicate_threshold"] == 0.95


def test_gpu_studies_that_reuse_models_train_them_identically(tmp_path):
    ids = {name: {t.trial_id for t in expand_trials(_without_data(name, tmp_path))}
           for name in ("memorization_celeba80_gpu", "gahb_pairs_gpu", "memorization_celeba40_gpu", "shuffle_gpu")}
    assert ids["gahb_pairs_gpu"] <= ids["memorization_celeba80_gpu"]
    assert len(ids["shuffle_gpu"] & ids["memorization_celeba40_gpu"]) == 2  # the unshuffled pair


def test_paper_studies_sharing_a_folder_share_their_models():
    """gahb_pairs_cpu, shuffle_cpu and discs_cpu reuse models of memorization_cpu (same folder)."""
    ids = {name: {t.trial_id for t in expand_trials(load_spec(STUDIES / f"{name}.yaml"))}
           for name in ("memorization_cpu", "gahb_pairs_cpu", "shuffle_cpu", "discs_cpu")}
    assert ids["gahb_pairs_cpu"] <= ids["memorization_cpu"]
    assert ids["discs_cpu"] <= ids["memorization_cpu"]
    assert len(ids["shuffle_cpu"] & ids["memorization_cpu"]) == 2  # the unshuffled pair at N = 1000


def test_paper_study_with_missing_data_names_the_folder():
    with pytest.raises(SpecError, match=r"datasets\[0\]\.params\.path: folder 'data/celeba"):
        load_spec(STUDIES / "memorization_celeba80_gpu.yaml")


def test_smoke_is_small_enough_for_a_cpu_demo():
    spec = load_spec(STUDIES / "smoke.yaml")
    assert spec.resources.gpus_per_trial == 0
    assert spec.image_size == 16 and spec.training.steps <= 1000 and spec.training.batch_size <= 64
    assert len(spec.analysis.sigmas) <= 8 and spec.analysis.jacobian_images == 1


# ---------------------------------------------------------------------------------------------
# defaults and normalisation


def test_defaults_are_the_papers():
    spec = parse_spec(BASE)
    t = spec.training
    assert (t.batch_size, t.lr, t.noise_range, t.noise_schedule, t.precision, t.workers) == \
        (512, 1e-3, (0.0, 255.0), "quadratic", "fp32", 1)
    s = spec.sampling
    assert (s.beta, s.h0, s.sigma_0, s.sigma_L, s.mean) == (1.0, 0.01, 1.0, 0.01, 0.5)
    a = spec.analysis
    assert len(a.sigmas) == 8 and a.sigmas[0] == 1.0 and a.sigmas[-1] == 255.0 and a.sigmas == sorted(a.sigmas)
    assert a.jacobian_sigmas == [5.0, 25.0, 100.0] and a.memorization_threshold == pytest.approx(1 / 3)
    assert spec.split_pairs == 1 and spec.seeds == [0]
    assert spec.storage.results_dir == "results/t" and spec.storage.mlflow_tracking_uri is None
    # kind defaults filled in: ids do not depend on spelling a default out
    assert spec.datasets[0].params == {"antialiasing": 2}
    assert spec.architectures[0].params["convs_per_block"] == 2


def test_every_dataset_kind_is_a_spec_model(tmp_path):
    params = {"calpha": {"alpha": 2.0}, "folder": {"path": str(tmp_path)}}
    spec = parse_spec(variant(datasets=[{"name": kind, "kind": kind, "params": params.get(kind)}
                                        for kind in DATASET_KINDS]))
    assert [d.kind for d in spec.datasets] == list(DATASET_KINDS)
    for d in spec.datasets:  # stored as a dict, defaults filled in by the kind's model
        assert d.params == DATASET_KINDS[d.kind].params.model_validate(d.params).model_dump(mode="json")


def test_lists_are_sorted_and_params_none_is_empty():
    data = variant(train_sizes=[100, 1, 10], seeds=[3, 1])
    data["datasets"][0]["params"] = None
    spec = parse_spec(data)
    assert spec.train_sizes == [1, 10, 100] and spec.seeds == [1, 3]


def test_yaml_1_1_exponent_floats_are_accepted(tmp_path):
    # PyYAML reads `1e-3` (no dot) as a string; the spec still takes it as a number
    text = yaml.safe_dump(BASE, sort_keys=False) + "training:\n  lr: 1e-3\n"
    assert load_spec(write(tmp_path, text)).training.lr == 1e-3


def test_folder_dataset_path_is_made_absolute(tmp_path, monkeypatch):
    (tmp_path / "imgs").mkdir()
    monkeypatch.chdir(tmp_path)
    spec = parse_spec(variant(datasets=[{"name": "f", "kind": "folder", "params": {"path": "imgs"}}]))
    assert Path(spec.datasets[0].params["path"]) == (tmp_path / "imgs").resolve()
    # prepared once per study and cached with the results unless the spec says where
    assert spec.datasets[0].params["cache_dir"] == str((tmp_path / "results" / "t" / "datasets").resolve())
    # the spec's default is the loader's own threshold (dataset_kinds writes it out to stay light)
    assert spec.datasets[0].params["crop"] == "center"
    assert spec.datasets[0].params["near_duplicate_threshold"] == NEAR_DUPLICATE_THRESHOLD
    elsewhere = variant(datasets=[{"name": "f", "kind": "folder", "params": {"path": "imgs", "cache_dir": "c"}}])
    assert parse_spec(elsewhere).datasets[0].params["cache_dir"] == str((tmp_path / "c").resolve())
    # the prepared images are read by file offset: an object store cannot hold them
    remote = variant(datasets=[{"name": "f", "kind": "folder", "params": {"path": "imgs", "cache_dir": "s3://b/c"}}])
    with pytest.raises(SpecError, match=r"datasets\[0\]\.params\.cache_dir: .*a folder path, not a URI"):
        parse_spec(remote)


def test_spec_modules_import_neither_ray_nor_mlflow():
    code = ("import sys, gahb_scale.design.spec, gahb_scale.design.spec_file, gahb_scale.design.trials; "
            "print(sorted(m for m in ('ray', 'mlflow', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # torch is imported only when an architecture is validated


# ---------------------------------------------------------------------------------------------
# the trial grid and its ids


def grid_spec() -> dict:
    return variant(
        datasets=[{"name": "discs", "kind": "discs"},
                  {"name": "ca", "kind": "calpha", "params": {"alpha": 2.0}, "pixel_shuffle_seed": 7}],
        architectures=[{"name": "u", "kind": "unet", "params": {"width": 4, "blocks": 1}},
                       {"name": "c", "kind": "bfcnn", "params": {"width": 4, "layers": 3}}],
        train_sizes=[1, 10, 100], split_pairs=2, seeds=[0, 5],
    )


def test_trial_count_and_order():
    spec = parse_spec(grid_spec())
    trials = expand_trials(spec)
    assert len(trials) == 2 * 2 * 3 * 2 * 2 * 2
    keys = [(t.dataset.name, t.architecture.name, t.n, t.pair, t.seed, t.split) for t in trials]
    ds_order, arch_order = {"discs": 0, "ca": 1}, {"u": 0, "c": 1}
    assert keys == sorted(keys, key=lambda k: (ds_order[k[0]], arch_order[k[1]], *k[2:]))
    assert len({t.trial_id for t in trials}) == len(trials)
    assert all(re.fullmatch(r"[0-9a-f]{12}", t.trial_id) for t in trials)
    assert all(t.study == "t" and isinstance(t, Trial) for t in trials)
    assert len(set(trials)) == len(trials)  # hashable


def test_ids_stable_across_loads(tmp_path):
    path = write(tmp_path, grid_spec())
    assert [t.trial_id for t in expand_trials(load_spec(path))] == [t.trial_id for t in expand_trials(load_spec(path))]


def test_ids_of_a_shipped_spec_are_those_its_results_were_written_under():
    """Known answers: the smoke study's first model, its split pair and its packs of 4 as 0.6 named
    them (a model file is found again only under its id)."""
    from gahb_scale.study.train import plan_packs

    spec = load_spec(STUDIES / "smoke.yaml")
    trials = expand_trials(spec)
    assert (trials[0].trial_id, trials[0].pair_id, trials[1].trial_id) == ("7d093d3b0fdc", "3e74649d99a4",
                                                                         "75c9e2bf953f")
    assert [p.pack_id for p in plan_packs(spec, trials, concurrency=2)] == ["pack-e7c0f62dfc67", "pack-e53dd8ab23b2"]


def test_ids_change_when_the_dataset_kind_is_versioned_up(monkeypatch):
    """A kind whose images change for unchanged parameters (the photos' cleaned pool) gets new ids, so a
    store's models trained on the old images are not reused; kinds never bumped keep theirs (above)."""
    import dataclasses

    from gahb_scale import dataset_kinds

    spec = load_spec(STUDIES / "smoke.yaml")
    before = [t.trial_id for t in expand_trials(spec)]
    kinds = dataset_kinds.DATASET_KINDS
    for kind in {d.kind for d in spec.datasets}:
        monkeypatch.setitem(kinds, kind, dataclasses.replace(kinds[kind], version=2))
    assert not set(before) & {t.trial_id for t in expand_trials(spec)}


def test_ids_independent_of_list_order():
    data = grid_spec()
    shuffled = copy.deepcopy(data)
    for key in ("datasets", "architectures", "train_sizes", "seeds"):
        shuffled[key] = list(reversed(shuffled[key]))
    assert ids_by_key(parse_spec(data)) == ids_by_key(parse_spec(shuffled))


@pytest.mark.parametrize("change", [
    {"name": "another_study", "description": "same trials, other study"},
    {"sampling": {"num_samples": 3, "seed": 9, "beta": 0.5}},
    {"analysis": {"sigmas": [3, 30], "bootstrap": 10, "jacobian_images": 1}},
    {"storage": {"results_dir": "s3://bucket/x", "mlflow_tracking_uri": "http://localhost:5000"}},
    {"resources": {"cpus_per_trial": 0.5, "gpus_per_trial": 0.25, "max_concurrent_trials": 4}},
    {"training": {"log_every": 7, "checkpoint_every": 3}},
])
def test_ids_ignore_what_does_not_change_the_trained_model(change):
    assert ids_by_key(parse_spec(grid_spec())) == ids_by_key(parse_spec({**grid_spec(), **change}))


@pytest.mark.parametrize("change", [
    {"training": {"steps": 2001}},
    {"training": {"lr": 0.002}},
    {"image_size": 16},
    {"test_images": 65},
])
def test_ids_change_with_what_determines_the_model(change):
    before, after = ids_by_key(parse_spec(grid_spec())), ids_by_key(parse_spec({**grid_spec(), **change}))
    assert before.keys() == after.keys()
    assert not set(before.values()) & set(after.values())


def test_ids_change_with_n_and_dataset_and_architecture_params():
    base = ids_by_key(parse_spec(BASE))
    assert base[("discs", "u", 1, 0, 0, "A")] != base[("discs", "u", 4, 0, 0, "A")]
    alt = copy.deepcopy(BASE)
    alt["datasets"][0]["params"] = {"antialiasing": 1}
    assert not set(base.values()) & set(ids_by_key(parse_spec(alt)).values())
    alt = copy.deepcopy(BASE)
    alt["architectures"][0]["params"]["width"] = 5
    assert not set(base.values()) & set(ids_by_key(parse_spec(alt)).values())
    # spelling out a default keeps the id
    alt = copy.deepcopy(BASE)
    alt["architectures"][0]["params"]["kernel_size"] = 3
    alt["datasets"][0]["params"] = {"antialiasing": 2}
    assert ids_by_key(parse_spec(alt)) == base


def test_split_pairs_share_pair_id_only():
    trials = expand_trials(parse_spec(grid_spec()))
    by_pair: dict[str, list[Trial]] = {}
    for t in trials:
        by_pair.setdefault(t.pair_id, []).append(t)
    assert len(by_pair) == len(trials) // 2
    for members in by_pair.values():
        a, b = members
        assert (a.split, b.split) == ("A", "B")
        assert a.trial_id != b.trial_id
        assert (a.dataset, a.architecture, a.n) == (b.dataset, b.architecture, b.n)
        assert (a.pair, a.seed) == (b.pair, b.seed)
    assert not set(by_pair) & {t.trial_id for t in trials}


def test_describe_trials_lists_every_trial():
    spec = parse_spec(grid_spec())
    text = describe_trials(spec)
    assert text.splitlines()[0].startswith(f"study t: {len(expand_trials(spec))} trials")
    for t in expand_trials(spec):
        assert re.search(rf"^{t.trial_id}\s+{t.dataset.name}\s+{t.architecture.name}\s+{t.n}\s+{t.pair}\s+"
                         rf"{t.split}\s+{t.seed}$", text, re.M)


# ---------------------------------------------------------------------------------------------
# malformed specs: every error names its field


def _folder_missing(tmp_path):
    return variant(datasets=[{"name": "f", "kind": "folder", "params": {"path": str(tmp_path / "nope")}}])


def _folder_is_file(tmp_path):
    (tmp_path / "file.png").write_bytes(b"x")
    return variant(datasets=[{"name": "f", "kind": "folder", "params": {"path": str(tmp_path / "file.png")}}])


MALFORMED = {
    "missing name": (lambda tp: variant(name=None), "name", "required"),
    "bad study name": (lambda tp: variant(name="my study"), "name", "only letters"),
    "top-level typo": (lambda tp: {**BASE, "trainig": {"steps": 5}}, "trainig", "did you mean 'training'"),
    "nested typo": (lambda tp: variant(training={"step": 5}), "training.step", "did you mean 'steps'"),
    "unknown dataset kind": (lambda tp: variant(datasets=[{"name": "x", "kind": "celeba"}]), "datasets[0].kind",
                             "calpha"),
    "dataset kind typo": (lambda tp: variant(datasets=[{"name": "x", "kind": "disc"}]), "datasets[0].kind",
                          "did you mean 'discs'"),
    "calpha without alpha": (lambda tp: variant(datasets=[{"name": "c", "kind": "calpha"}]),
                             "datasets[0].params.alpha", "missing"),
    "alpha negative": (lambda tp: variant(datasets=[{"name": "c", "kind": "calpha", "params": {"alpha": -1}}]),
                       "datasets[0].params.alpha", "greater than 0"),
    "unknown dataset param": (lambda tp: variant(datasets=[{"name": "d", "kind": "discs", "params": {"radius": 2}}]),
                              "datasets[0].params.radius", "antialiasing"),
    "folder path missing": (_folder_missing, "datasets[0].params.path", "does not exist"),
    "folder path is a file": (_folder_is_file, "datasets[0].params.path", "not a directory"),
    "duplicate dataset names": (lambda tp: variant(datasets=[{"name": "d", "kind": "discs"},
                                                             {"name": "d", "kind": "photos"}]),
                                "datasets[1].name", "duplicate"),
    "no datasets": (lambda tp: variant(datasets=[]), "datasets", "at least 1"),
    "empty train_sizes": (lambda tp: variant(train_sizes=[]), "train_sizes", "at least 1"),
    "train size 0": (lambda tp: variant(train_sizes=[1, 0]), "train_sizes[1]", "greater than or equal to 1"),
    "duplicate train size": (lambda tp: variant(train_sizes=[4, 1, 4]), "train_sizes[2]", "duplicate"),
    "unknown architecture kind": (lambda tp: variant(architectures=[{"name": "a", "kind": "unte"}]),
                                  "architectures[0].kind", "did you mean 'unet'"),
    "unknown architecture keyword": (lambda tp: variant(architectures=[{"name": "a", "kind": "unet",
                                                                        "params": {"widht": 4}}]),
                                     "architectures[0].params.widht", "did you mean 'width'"),
    "architecture param wrong type": (lambda tp: variant(architectures=[{"name": "a", "kind": "unet",
                                                                         "params": {"width": "wide"}}]),
                                      "architectures[0].params.width", "integer"),
    "architecture rejects value": (lambda tp: variant(architectures=[{"name": "a", "kind": "bfcnn",
                                                                      "params": {"layers": 2}}]),
                                   "architectures[0].params", "layers >= 3"),
    "architecture channels": (lambda tp: variant(architectures=[{"name": "a", "kind": "unet",
                                                                 "params": {"channels": 3}}]),
                              "architectures[0].params.channels", "greyscale"),
    "image_size not divisible": (lambda tp: variant(image_size=10, architectures=[
        {"name": "a", "kind": "unet", "params": {"width": 4, "blocks": 2}}]), "image_size", "multiple of 4"),
    "image_size too small": (lambda tp: variant(image_size=2), "image_size", "greater than or equal to 4"),
    "sigma_L >= sigma_0": (lambda tp: variant(sampling={"sigma_0": 0.5, "sigma_L": 0.5}), "sampling.sigma_L",
                           "smaller than sigma_0"),
    "sigma_0 below default sigma_L": (lambda tp: variant(sampling={"sigma_0": 0.005}), "sampling.sigma_L",
                                      "smaller than sigma_0"),
    "eigenvector_images above kept": (lambda tp: variant(analysis={"eigenvalues_kept": 4}),
                                      "analysis.eigenvector_images", "eigenvalues_kept"),
    "no eigenvector for the basis overlap": (lambda tp: variant(analysis={"eigenvector_images": 0}),
                                             "analysis.eigenvector_images", "greater than or equal to 1"),
    "beta 0": (lambda tp: variant(sampling={"beta": 0}), "sampling.beta", "greater than 0"),
    "beta above 1": (lambda tp: variant(sampling={"beta": 1.5}), "sampling.beta", "less than or equal to 1"),
    "gpus 1.5": (lambda tp: variant(resources={"gpus_per_trial": 1.5}), "resources.gpus_per_trial", "fractional"),
    "DDP on a GPU share": (lambda tp: variant(training={"workers": 2, "batch_size": 8},
                                              resources={"gpus_per_trial": 0.5}),
                           "resources.gpus_per_trial", "whole GPU"),
    "negative lr": (lambda tp: variant(training={"lr": -0.001}), "training.lr", "greater than 0"),
    "noise range reversed": (lambda tp: variant(training={"noise_range": [50, 10]}), "training.noise_range",
                             "low < high"),
    "unknown precision": (lambda tp: variant(training={"precision": "fp16"}), "training.precision", "bf16"),
    "batch not divisible by workers": (lambda tp: variant(training={"workers": 3, "batch_size": 8}),
                                       "training.workers", "batch_size"),
    "analysis sigma above 255": (lambda tp: variant(analysis={"sigmas": [10, 300]}), "analysis.sigmas[1]",
                                 "(0, 255]"),
    "nan lr": (lambda tp: variant(training={"lr": float("nan")}), "training.lr", "finite"),
    "snapshot after training": (lambda tp: variant(training={"steps": 100, "snapshot_steps": [50, 150]}),
                                "training.snapshot_steps", "after the end of training"),
    "slope range without two sigmas": (lambda tp: variant(analysis={"sigmas": [5, 25, 100],
                                                                    "slope_sigma_range": [20, 50]}),
                                       "analysis.slope_sigma_range", "fewer than two"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_spec_names_the_field(case, tmp_path):
    make, field_path, words = MALFORMED[case]
    path = write(tmp_path, make(tmp_path))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    err = info.value
    assert isinstance(err, UserInputError)
    paths = [p for p, _ in err.errors]
    assert field_path in paths, str(err)
    text = str(err)
    assert str(path) in text.splitlines()[0]
    assert f"  {field_path}: " in text
    line = next(line for line in text.splitlines() if line.strip().startswith(f"{field_path}: "))
    assert words.lower() in line.lower(), text


def test_every_error_is_reported(tmp_path):
    data = variant(training={"lr": -1}, datasets=[{"name": "c", "kind": "calpha", "params": {"alpha": -2}}],
                   sampling={"beta": 2})
    data["typo"] = 1
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, data))
    paths = {p for p, _ in info.value.errors}
    assert {"training.lr", "datasets[0].params.alpha", "sampling.beta", "typo"} <= paths
    lines = str(info.value).splitlines()
    assert lines[0].endswith(f"{len(info.value.errors)} errors in the study spec:")
    assert len(lines) == 1 + len(info.value.errors)


def test_two_errors_both_reported(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, variant(image_size=2, train_sizes=[0])))
    assert [p for p, _ in info.value.errors] == ["image_size", "train_sizes[0]"]


# ---------------------------------------------------------------------------------------------
# file-level problems


def test_invalid_yaml_reports_line(tmp_path):
    path = write(tmp_path, "name: t\nimage_size: 8\ndatasets: [\n  {name: d, kind: discs\narchitectures: []\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert re.search(r"not valid YAML at line \d+", str(info.value))
    assert str(path) in str(info.value)


def test_duplicate_yaml_key_is_an_error(tmp_path):
    path = write(tmp_path, "name: t\nimage_size: 8\nimage_size: 16\n")
    with pytest.raises(SpecError, match=r"line 3.*duplicate key 'image_size'"):
        load_spec(path)


@pytest.mark.parametrize("text, words", [("- name: t\n- image_size: 8\n", "got a list"),
                                         ("", "got an empty document"),
                                         ("just a string\n", "got a str")])
def test_top_level_must_be_a_mapping(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(SpecError, match="top level must be a mapping") as info:
        load_spec(path)
    assert words in str(info.value) and str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="no such study spec file") as info:
        load_spec(tmp_path / "absent.yaml")
    assert "absent.yaml" in str(info.value)


def test_architecture_spec_reports_size_multiple():
    arch = ArchitectureSpec(name="u", kind="unet", params={"width": 4, "blocks": 3})
    assert arch.size_multiple == 8
    assert ArchitectureSpec(name="c", kind="bfcnn", params={"width": 4, "layers": 3}).size_multiple == 1


# ---------------------------------------------------------------------------------------------
# training steps per train size


def test_steps_per_train_size():
    """A mapping {N: steps} gives every model its N's steps (and only the snapshots within them);
    changing one N's steps changes that N's trial ids only, and one number keeps the ids it had."""
    fixed = parse_spec(variant(training={"steps": 300, "snapshot_steps": [50, 200]}))
    mapped = parse_spec(variant(training={"steps": {1: 300, 4: 100}, "snapshot_steps": [50, 200]}))
    assert ids_by_key(fixed) == ids_by_key(parse_spec(variant(training={"steps": {1: 300, 4: 300},
                                                                         "snapshot_steps": [50, 200]})))
    changed = {k: v for k, v in ids_by_key(mapped).items() if v != ids_by_key(fixed)[k]}
    assert changed and {k[2] for k in changed} == {4}
    config = mapped.training.config(seed=7, n=4)
    assert (config.steps, config.snapshot_steps, config.seed) == (100, (50,), 7)
    assert mapped.training.config(seed=7, n=1).snapshot_steps == (50, 200)
    assert mapped.training.max_steps == 300 and "\n  N = 4: 100 steps" in mapped.training.budget()
    halving = parse_spec(variant(training={"steps": 300, "lr_halve_every": {1: 100, 4: 50}}))
    assert [halving.training.config(0, n).lr_halve_every for n in (1, 4)] == [100, 50]
    same_for_one = ids_by_key(parse_spec(variant(training={"steps": 300, "lr_halve_every": {1: 100, 4: 100}})))
    assert {k[2] for k, v in ids_by_key(halving).items() if v != same_for_one[k]} == {4}


def test_batch_size_per_train_size():
    """A mapping {N: batch} gives each N its batch, a pack holds one batch size, and every batch
    must split evenly over the workers."""
    from gahb_scale.study.train import plan_packs
    spec = parse_spec(variant(training={"batch_size": {1: 8, 4: 32}}, resources={"models_per_pack": 4}))
    assert [spec.training.config(0, n).batch_size for n in (1, 4)] == [8, 32]
    # the costlier pack (batch 32) first
    assert [{t.n for t in p.trials} for p in plan_packs(spec, expand_trials(spec), concurrency=1)] == [{4}, {1}]
    same = ids_by_key(parse_spec(variant(training={"batch_size": {1: 32, 4: 32}})))
    assert {k[2] for k, v in ids_by_key(spec).items() if v != same[k]} == {1}
    assert "\n  N = 1: " in spec.training.budget() and "steps of batch 8 " in spec.training.budget()
    with pytest.raises(SpecError, match=re.escape("training.batch_size = 6 cannot be split evenly over 4 workers")):
        parse_spec(variant(training={"batch_size": {1: 8, 4: 6}, "workers": 4}))
    with pytest.raises(SpecError, match=re.escape("N = 4: must be in [1, 65,536]")):
        parse_spec(variant(training={"batch_size": {1: 8, 4: 0}}))


@pytest.mark.parametrize("steps, words", [({1: 300}, "no value for N = [4]"),
                                          ({1: 300, 4: 100, 9: 5}, "N = [9] not in train_sizes"),
                                          ({1: 300, 4: 0}, "N = 4: must be in [1,")])
def test_steps_per_train_size_must_name_every_n(steps, words):
    with pytest.raises(SpecError, match=re.escape(words)) as error:
        parse_spec(variant(training={"steps": steps}))
    assert "training.steps" in str(error.value)


def test_packs_share_their_steps():
    """A pack runs one schedule: models of different step counts go in different packs."""
    from gahb_scale.study.train import plan_packs
    spec = parse_spec(variant(training={"steps": {1: 300, 4: 100}}, resources={"models_per_pack": 4}))
    packs = plan_packs(spec, expand_trials(spec), concurrency=1)
    assert [{t.n for t in p.trials} for p in packs] == [{1}, {4}]
