"""GPU cost of study specs, from a measured training throughput.

The one GPU measurement so far (benchmarks/training_throughput.py on one H100): the paper's UNet at
80x80, batch 512, bf16 autocast, trains at 4,018 images/s. Other (architecture, image size) pairs are
estimated from it by their model FLOPs per image (forward + backward, counted by
`torch.utils.flop_counter`), i.e. at the same FLOP/s: a first-order estimate that small images (more
overhead per FLOP) and the BF-CNN (no down-sampling, a different memory/compute balance) may miss.
With `--measure` on a GPU, every pair is timed instead, in the packs the runner would form on one
GPU, and the table cites those numbers (images/s per model).

    python benchmarks/gpu_cost.py studies/*_gpu*.yaml [--measure]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from gahb_scale.design.spec_file import parse_spec
from gahb_scale.design.trials import expand_trials
from gahb_scale.models import build_model
from gahb_scale.study.train import plan_packs
from gahb_scale.training import training_flops_per_image
from training_throughput import throughput  # this folder: run as benchmarks/gpu_cost.py

MEASURED = {"images_per_second": 4018.0, "arch": "unet", "params": {}, "size": 80,
            "what": "paper UNet, 80x80, batch 512, bf16, one H100 (measured)"}
AUTHORS_IMAGES = 1000 * 250_000  # the authors' budget: 1000 epochs of 250k images


def flops_per_image(kind: str, params: dict, size: int) -> float:
    return training_flops_per_image(build_model(kind, seed=0, **params), (1, size, size))


def spec_without_data(path: str):
    """The spec with every image folder pointed at an empty stand-in: the cost needs no data."""
    data = yaml.safe_load(Path(path).read_text())
    with tempfile.TemporaryDirectory() as empty:
        for dataset in data["datasets"]:
            if dataset["kind"] == "folder":
                dataset["params"]["path"] = empty
        return parse_spec(data, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--measure", action="store_true", help="time every model on this machine's GPU")
    args = parser.parse_args()
    reference = flops_per_image(MEASURED["arch"], MEASURED["params"], MEASURED["size"])
    print(f"reference: {MEASURED['what']}: {MEASURED['images_per_second']:,.0f} img/s, "
          f"{reference / 1e9:.1f} GFLOP per image per step")
    print(f"{'spec':34} {'arch':6} {'size':>4} {'GFLOP/img':>9} {'img/s':>8} {'models':>6} {'steps':>8} "
          f"{'x authors':>9} {'GPU-h/model':>11} {'GPU-h':>7}")
    for path in args.specs:
        spec = spec_without_data(path)
        total = 0.0
        for arch in spec.architectures:
            flops = flops_per_image(arch.kind, arch.params, spec.image_size)
            group = [t for t in expand_trials(spec) if t.architecture.name == arch.name]
            models = len(group)
            # steps and batch may be given per N: every model's own images, summed over the group
            schedule = {t.trial_id: spec.training.per_train_size(t.n) for t in group}
            images = {key: s["steps"] * s["batch_size"] for key, s in schedule.items()}
            images_per_model = sum(images.values()) / models
            steps_per_model = sum(s["steps"] for s in schedule.values()) / models
            if args.measure:  # the packs the runner forms on one GPU; img/s per model of the pack
                seconds, speeds = 0.0, {}
                for pack in plan_packs(spec, group, concurrency=1):
                    k, batch = len(pack.trials), schedule[pack.trials[0].trial_id]["batch_size"]
                    if (k, batch) not in speeds:
                        speeds[(k, batch)] = throughput(arch.kind, arch.params, spec.image_size, batch,
                                                        spec.training.precision, "cuda", sizes=(1000,) * k)["images_per_s"] / k
                    seconds += sum(images[t.trial_id] for t in pack.trials) / speeds[(k, batch)]
                speed = sum(images.values()) / seconds
            else:
                speed = MEASURED["images_per_second"] * reference / flops
            hours = images_per_model / speed / 3600
            total += hours * models
            print(f"{spec.name:34} {arch.name:6} {spec.image_size:4d} {flops / 1e9:9.2f} {speed:8,.0f} {models:6d} "
                  f"{steps_per_model:8,.0f} {images_per_model / AUTHORS_IMAGES:9.3f} {hours:11.1f} "
                  f"{hours * models:7.0f}")
        print(f"{spec.name:34} total {total:,.0f} GPU-hours ({total * 60:,.1f} GPU-minutes of training)")


if __name__ == "__main__":
    main()
