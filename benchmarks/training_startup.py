"""The smoke study's training stage, one model per Ray Train run vs packed, side by side.

Both sides train the same models (`models_per_pack: 1` vs the default packing) on the same local
Ray, in alternating order, each into a fresh results folder; the time is the training stage
alone (Tune grid to the last model file), Ray's own start excluded as it is the same for both.
Each side runs `--repeats` times; the median is reported.

    python benchmarks/training_startup.py [studies/smoke.yaml] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import ray

from gahb_scale.design.datasets import prepare_datasets
from gahb_scale.design.spec_file import load_spec
from gahb_scale.design.trials import expand_trials
from gahb_scale.study.runner import start_ray
from gahb_scale.study.status import study_state
from gahb_scale.study.store import StudyStore, StudyTables
from gahb_scale.study.track import StudyTracker


def training_seconds(spec_path: str, models_per_pack: int | None) -> tuple[float, int]:
    """Wall seconds of the training stage and the number of packs it ran."""
    from gahb_scale.study.train import max_concurrent, plan_packs, train_study  # after start_ray (see RAY_ENV)

    with tempfile.TemporaryDirectory() as results:
        spec = load_spec(spec_path, results_dir=results)
        spec = spec.model_copy(update={"resources": spec.resources.model_copy(
            update={"models_per_pack": models_per_pack})})
        store = StudyStore(results)
        datasets = prepare_datasets(spec)
        prepared = datasets.cache()
        tracker = StudyTracker(spec, store)  # the study streams training to MLflow: so does this
        tracker.start(Path(spec_path).read_text())
        state = study_state(spec, store, StudyTables(store, spec.name))
        packs = plan_packs(spec, state.trials, max_concurrent(spec, ray.cluster_resources()))
        start = time.perf_counter()
        trained = train_study(spec, store, state, prepared, local_ray=True, tracker=tracker)
        seconds = time.perf_counter() - start
        tracker.finish("FINISHED")
        if len(trained) < len(state.trials):
            raise SystemExit(f"{len(state.trials) - len(trained)} model(s) failed to train")
        return seconds, len(packs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default="studies/smoke.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    start_ray(None)
    try:
        spec = load_spec(args.spec)
        print(f"{args.spec}: {len(expand_trials(spec))} models of {spec.training.max_steps} steps, batch "
              f"{spec.training.batch_size}; Ray has {ray.cluster_resources().get('CPU', 0):g} CPUs")
        times = {"one model per run": [], "packed": []}
        for repeat in range(args.repeats):
            for name, per_pack in (("one model per run", 1), ("packed", None)):
                seconds, packs = training_seconds(args.spec, per_pack)
                times[name].append(seconds)
                print(f"  run {repeat + 1}: {name}: {packs} Ray Train run(s), {seconds:.1f} s", flush=True)
        solo, packed = (statistics.median(times[k]) for k in times)
        print(f"training stage, median of {args.repeats}: one model per run {solo:.1f} s, packed {packed:.1f} s, "
              f"speed-up {solo / packed:.2f}x (target >= 2)")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
