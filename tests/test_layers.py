"""The layering rule and the resource model: the science core knows nothing of Ray or MLflow, and
a study never asks for more concurrent trials than the cluster can place."""

import logging
import subprocess
import sys
from contextlib import contextmanager

import pytest

from gahb_scale.design.spec_file import parse_spec

CORE = ["gahb_scale.data", "gahb_scale.models", "gahb_scale.packing", "gahb_scale.training", "gahb_scale.sampling",
        "gahb_scale.analysis", "gahb_scale.figures"]
# a study's design: spec, trials, datasets as images, measures of a model and of a pair
DESIGN = ["gahb_scale.design.spec_file", "gahb_scale.design.trials", "gahb_scale.design.datasets",
          "gahb_scale.design.measures", "gahb_scale.design.transition_columns"]


def loaded_by(modules: list[str], above: tuple[str, ...]) -> list[str]:
    """The modules of ray, mlflow, pyarrow, duckdb and the layers `above` that importing `modules` in
    a fresh interpreter loads."""
    code = (f"import sys; import {', '.join(modules)}; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"('ray', 'mlflow', 'pyarrow', 'duckdb') or m.startswith({above!r})))")
    return eval(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def test_the_core_loads_no_ray_mlflow_parquet_design_or_study():
    assert loaded_by(CORE, ("gahb_scale.design", "gahb_scale.study")) == []


def test_the_design_layer_loads_no_ray_mlflow_parquet_or_study():
    """The study layer is the machinery alone: what a study trains and measures loads none of it."""
    assert loaded_by(DESIGN, ("gahb_scale.study",)) == []


def test_no_layer_imports_one_above_it_even_inside_a_function():
    """core -> nothing above; design -> core only; what importing them loads (above) cannot see an
    import inside a function that has not run."""
    def layer(module: str) -> int:
        return 2 if module.startswith("gahb_scale.study") or module == "gahb_scale.cli" else \
            1 if module.startswith("gahb_scale.design") else 0
    upward = sorted((module, target) for module, targets in _package_imports().items() for target in targets
                    if layer(target) > layer(module))
    assert upward == []


def spec_with(**resources):
    return parse_spec({"name": "r", "image_size": 12, "datasets": [{"name": "d", "kind": "discs"}],
                       "architectures": [{"name": "u", "kind": "unet", "params": {"width": 4, "blocks": 1}}],
                       "train_sizes": [1], "resources": {"max_concurrent_trials": 8, **resources}})


@pytest.mark.parametrize("resources, cluster, expected", [
    ({"cpus_per_trial": 1}, {"CPU": 2}, 2),          # two 1-CPU trials fill 2 CPUs, drivers included
    ({"cpus_per_trial": 2}, {"CPU": 2}, 1),
    ({"cpus_per_trial": 1}, {"CPU": 64}, 8),         # the spec's cap
    ({"cpus_per_trial": 1, "gpus_per_trial": 0.25}, {"CPU": 16, "GPU": 1}, 4),  # fractional GPUs
    ({"cpus_per_trial": 1, "gpus_per_trial": 1}, {"CPU": 16, "GPU": 2}, 2),
])
def test_concurrency_never_exceeds_what_the_cluster_can_place(resources, cluster, expected):
    from gahb_scale.study.train import max_concurrent

    spec = spec_with(**resources)
    k = max_concurrent(spec, cluster)
    assert k == expected
    r = spec.resources
    # k trials hold k x cpus_per_trial (their drivers hold no CPU)
    assert k * r.cpus_per_trial <= cluster["CPU"] + 1e-9
    assert k * r.gpus_per_trial <= cluster.get("GPU", 0) + 1e-9


def study(architectures, sizes=(1, 10, 100, 1000), image_size=16, batch_size=64, **resources):
    return parse_spec({"name": "p", "image_size": image_size, "datasets": [{"name": "d", "kind": "discs"}],
                       "architectures": architectures, "train_sizes": list(sizes),
                       "training": {"batch_size": batch_size},
                       "resources": {"max_concurrent_trials": 2, **resources}})


SMALL = {"name": "small", "kind": "unet", "params": {"width": 16, "blocks": 2}}


def test_small_models_are_packed_into_as_many_packs_as_run_side_by_side():
    from gahb_scale.design.trials import expand_trials
    from gahb_scale.study.train import plan_packs

    spec = study([SMALL])
    trials = expand_trials(spec)
    packs = plan_packs(spec, trials, concurrency=2)
    assert [len(p.trials) for p in packs] == [4, 4]
    assert [t for p in packs for t in p.trials] == trials  # every model once, in the study's order
    assert len({p.pack_id for p in packs}) == 2
    # planned from the whole study, so a re-started study finds the same packs (and their checkpoints)
    assert [p.pack_id for p in plan_packs(spec, trials, concurrency=2)] == [p.pack_id for p in packs]
    # the spec's setting wins; 1 is one model per Ray Train run
    assert [len(p.trials) for p in plan_packs(study([SMALL], models_per_pack=3), trials, 2)] == [3, 3, 2]
    assert [len(p.trials) for p in plan_packs(study([SMALL], models_per_pack=1), trials, 2)] == [1] * 8


def test_with_several_schedules_each_is_one_pack_and_the_costliest_goes_first():
    """Two workers, four schedules of four models each: a schedule's models fit one worker's share of
    the study, so each schedule is one pack (not two of two: half the worker-group starts), and the
    workers take the longest pack first."""
    from gahb_scale.design.trials import expand_trials
    from gahb_scale.study.train import plan_packs

    spec = parse_spec({"name": "p", "image_size": 16, "datasets": [{"name": "d", "kind": "discs"}],
                       "architectures": [SMALL], "train_sizes": [2, 4, 16, 64], "split_pairs": 2,
                       "training": {"steps": {2: 300, 4: 600, 16: 100, 64: 200}, "batch_size": 16},
                       "resources": {"max_concurrent_trials": 2}})
    packs = plan_packs(spec, expand_trials(spec), concurrency=2)
    assert [len(p.trials) for p in packs] == [4, 4, 4, 4]
    assert [{t.n for t in p.trials} for p in packs] == [{4}, {2}, {64}, {16}]
    # one schedule whose models are most of the study's work: split over both workers
    heavy = parse_spec({**spec.model_dump(mode="json"), "training": {"steps": {2: 300, 4: 6000, 16: 100, 64: 200},
                                                                     "batch_size": 16}})
    assert [len(p.trials) for p in plan_packs(heavy, expand_trials(heavy), concurrency=2)] == [2, 2, 4, 4, 4]


def test_on_the_studys_own_ray_a_pack_runs_without_the_placement_group_cleaner():
    """The local Ray has no State API, which Ray Train's placement-group cleaner needs (it held each
    pack 12 s at its end and never cleaned): the local trainer drops that callback and no other.
    Checked against Ray's own list; a Ray without that callback (older, or renamed) is a skip here."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from gahb_scale.study.train import TorchTrainerWithoutStateApi

    def callbacks(trainer_class):
        trainer = trainer_class(lambda config: None, scaling_config=ray.train.ScalingConfig(num_workers=1))
        return [type(c).__name__ for c in trainer._create_default_callbacks()]

    ray_default = callbacks(TorchTrainer)
    if "PlacementGroupCleanerCallback" not in ray_default:
        pytest.skip(f"Ray {ray.__version__} starts no PlacementGroupCleanerCallback: nothing to drop")
    assert callbacks(TorchTrainerWithoutStateApi) == [n for n in ray_default if n != "PlacementGroupCleanerCallback"]


def test_a_pack_holds_one_architecture_and_the_papers_unet_at_80_trains_alone():
    from gahb_scale.design.trials import expand_trials
    from gahb_scale.study.train import plan_packs

    paper = {"name": "paper", "kind": "unet", "params": {}}
    spec = study([SMALL, paper], sizes=(1, 10), image_size=80, batch_size=512)
    packs = plan_packs(spec, expand_trials(spec), concurrency=1)
    for pack in packs:
        assert len({t.architecture.name for t in pack.trials}) == 1
    assert [len(p.trials) for p in packs if p.trials[0].architecture.name == "paper"] == [1, 1, 1, 1]
    assert [len(p.trials) for p in packs if p.trials[0].architecture.name == "small"] == [4]


# Declared for what they do inside another dependency, not imported by gahb_scale itself.
INDIRECT_DEPENDENCIES = {"boto3": "MLflow's S3 artifact store (pyarrow has its own S3 client)",
                         "psutil": "MLflow's system metrics (CPU, memory) on the study run",
                         "nvidia-ml-py": "MLflow's system metrics of GPUs (pynvml)"}


def test_every_declared_dependency_is_imported_by_the_package():
    import ast
    import importlib.metadata
    import re
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    root = Path(__file__).resolve().parents[1]
    declared = [re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower()
                for d in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]]
    imported = set()
    for path in (root / "gahb_scale").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    providers = importlib.metadata.packages_distributions()  # import name -> distributions
    used = {dist.lower() for name in imported for dist in providers.get(name, [])}
    unused = [d for d in declared if d not in used and d not in INDIRECT_DEPENDENCIES]
    assert not unused, f"declared in pyproject.toml but never imported by gahb_scale: {unused}"


def _package_imports() -> dict[str, set[str]]:
    """Module -> the gahb_scale modules it imports, anywhere in it (inside functions too)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (root / "gahb_scale").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # `from . import figures` names a module; `from .store import x` names one too
                candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            targets |= {c for c in candidates if c in modules and c != name}
        graph[name] = targets
    return graph


def test_no_import_circle_in_the_package_counting_imports_inside_functions():
    graph = _package_imports()
    assert graph["gahb_scale.study.runner"] >= {"gahb_scale.study.store", "gahb_scale.study.track"}  # the walk sees imports

    def cycle_from(start, path, seen):
        for target in sorted(graph[path[-1]]):
            if target == start:
                return path + [target]
            if target not in seen:
                seen.add(target)
                if found := cycle_from(start, path + [target], seen):
                    return found
        return None

    # a package's __init__ importing its own modules is not a circle of the code
    circles = [c for m in graph if (c := cycle_from(m, [m], set())) and not any(
        a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert circles == [], f"import circles: {circles[:3]}"


def test_the_module_map_names_every_module_and_only_existing_ones():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    internals = (root / "docs" / "internals.md").read_text()
    section = internals[internals.index("## Architecture"):]
    section = section[:section.index("\n## ", 1)]
    named = set(re.findall(r"`(gahb_scale/[\w/]+\.py)`", section))
    modules = {str(p.relative_to(root)) for p in (root / "gahb_scale").rglob("*.py") if p.name != "__init__.py"}
    assert sorted(modules - named) == [], "modules missing from the map in docs/internals.md"
    assert sorted(named - modules) == [], "the map in docs/internals.md names files that do not exist"


def test_a_restarted_study_resumes_the_packs_it_recorded_and_packs_only_untrained_models(tmp_path):
    import json

    from gahb_scale.design.trials import expand_trials
    from gahb_scale.study.store import StudyStore, pack_path
    from gahb_scale.study.train import packs_to_train, plan_packs

    spec = study([SMALL])
    store = StudyStore(str(tmp_path))
    trials = expand_trials(spec)
    first, second = plan_packs(spec, trials, concurrency=2)
    store.write_bytes(pack_path("pack-of-another-plan"), json.dumps([first.trials[0].trial_id]).encode())
    store.write_bytes(pack_path("pack-of-another-study"), json.dumps(["x"]).encode())
    store.write_bytes(pack_path(second.pack_id), json.dumps([t.trial_id for t in second.trials]).encode())
    trained = {t.trial_id for t in first.trials}  # the first pack finished; the second was interrupted
    # four models are left, but they are still the second pack (its checkpoints are under its id),
    # not two new packs of two
    assert [p.pack_id for p in packs_to_train(spec, store, trials, trained, concurrency=2)] == [second.pack_id]
    assert store.exists(pack_path(second.pack_id)) and store.exists(pack_path("pack-of-another-study"))
    assert not store.exists(pack_path("pack-of-another-plan"))  # its models are trained: nothing to resume

    # the second pack finished too, and the study grew: only the new models train, packed among themselves
    grown = study([SMALL], sizes=(1, 10, 20, 100, 1000))
    new = [t for t in expand_trials(grown) if t.trial_id not in {t.trial_id for t in trials}]
    packs = packs_to_train(grown, store, expand_trials(grown), {t.trial_id for t in trials}, concurrency=2)
    assert sorted(t.trial_id for p in packs for t in p.trials) == sorted(t.trial_id for t in new)
    assert not store.exists(pack_path(second.pack_id)) and all(store.exists(pack_path(p.pack_id)) for p in packs)

    # a recorded pack of one model resumes after the new packs of four and three: the costliest first
    again = StudyStore(str(tmp_path / "again"))
    again.write_bytes(pack_path("pack-of-one"), json.dumps([trials[0].trial_id]).encode())
    assert [len(p.trials) for p in packs_to_train(spec, again, trials, set(), concurrency=2)] == [4, 3, 1]


def test_a_model_file_without_its_training_record_is_one_clear_error(tmp_path):
    """A model file with no training record beside it (a folder copied in part) is named in one
    message that says how to train that model again."""
    from gahb_scale.design.trials import expand_trials
    from gahb_scale.errors import UserInputError
    from gahb_scale.study.store import StudyStore, StudyTables, model_path
    from gahb_scale.study.train import register_trained

    spec = study([SMALL], sizes=(1,))
    store = StudyStore(str(tmp_path))
    broken = expand_trials(spec)[0]
    store.write_bytes(model_path(broken.trial_id), b"a model file")
    with pytest.raises(UserInputError, match=f"{broken.trial_id}/model.pt has no training record"):
        register_trained(spec, StudyTables(store, spec.name), [broken])


@contextmanager
def study_log_lines():
    """The messages the study layer logs while inside, as a list."""
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    log = logging.getLogger("gahb_scale.study")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def test_a_packs_last_step_is_told_once():
    """A pack reports its last step twice, the second time with its checkpoint: one progress line."""
    from types import SimpleNamespace

    from gahb_scale.design.trials import expand_trials
    from gahb_scale.study.train import Pack, TrainProgress

    spec = study([SMALL], sizes=(1,))
    pack = Pack(tuple(expand_trials(spec)))
    progress = TrainProgress(spec, {pack.pack_id: pack}, SimpleNamespace(log_training=lambda *_: None), set())
    steps = spec.training.steps
    with study_log_lines() as lines:
        for step in (steps // 2, steps, steps):
            progress.on_trial_result(0, [], SimpleNamespace(config={"pack_id": pack.pack_id}),
                                     {"step": step, "losses": [1.0, 2.0], "images_per_s": 100.0})
    assert [line.split(": ", 1)[1].split(" loss")[0] for line in lines if pack.pack_id in line] == \
        [f"step {steps // 2}/{steps}", f"step {steps}/{steps}"]


def test_a_failed_resumed_pack_fails_only_the_runs_of_its_models_not_saved_before():
    """A resumed pack trains its saved models along (their file is kept); when it fails, their
    MLflow runs, complete since an earlier run, must not turn FAILED."""
    from types import SimpleNamespace

    from gahb_scale.design.trials import expand_trials
    from gahb_scale.study.train import Pack, TrainProgress

    spec = study([SMALL], sizes=(1,))
    pack = Pack(tuple(expand_trials(spec)))
    saved, failed = pack.trials[0].trial_id, []
    tracker = SimpleNamespace(model_failed=lambda trial, reason: failed.append(trial.trial_id))
    progress = TrainProgress(spec, {pack.pack_id: pack}, tracker, {saved})
    progress.on_trial_error(0, [], SimpleNamespace(config={"pack_id": pack.pack_id}, pickled_error_file=None,
                                                   error_file=None))
    assert failed == [t.trial_id for t in pack.trials if t.trial_id != saved] and failed


def test_a_stages_last_count_is_told_once(monkeypatch):
    """Off a terminal a stage prints plain lines; one that already told the final count (its last
    update came after PLAIN_EVERY_S) does not tell it again when it closes."""
    from gahb_scale.study import progress as progress_module

    monkeypatch.setattr(progress_module, "PLAIN_EVERY_S", 0.0)  # every update prints its line
    with study_log_lines() as lines:
        stage = progress_module.StageProgress("analysis", total=3, unit="task")
        for _ in range(3):
            stage.update()
        stage.close()
        silent = progress_module.StageProgress("pairs", total=0, unit="task")  # nothing to do: still one line
        silent.close()
    assert [line.split(",")[0] for line in lines] == ["[analysis] 1/3 tasks", "[analysis] 2/3 tasks",
                                                      "[analysis] 3/3 tasks", "[pairs] 0/0 tasks"]


def test_a_stages_rate_and_eta_leave_out_the_wait_before_its_first_update(monkeypatch):
    """Training's first step comes after Ray has started the workers (tens of seconds): a rate
    over the whole stage put the first ETA at several times the real one."""
    from gahb_scale.study import progress as progress_module

    now = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(progress_module, "PLAIN_EVERY_S", 0.0)
    with study_log_lines() as lines:
        stage = progress_module.StageProgress("train", total=800, unit="step")
        now[0] = 40.0  # Ray's start-up, then 50 steps
        stage.update(50)
        now[0] = 50.0
        stage.update(20)  # 2 steps/s since the first update
        stage.bar.close()
    assert lines == ["[train] 50/800 steps", "[train] 70/800 steps, 2/s, ETA 365 s"]
