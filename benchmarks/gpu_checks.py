"""Every GPU measurement and CUDA test of the training path, in one run of a few minutes on one GPU.

1. the CUDA tests (tests/test_gpu.py);
2. the paper's UNet at 80x80, batch 512: images/s and MFU, fp32 and bf16, eager and compiled;
3. a torch.profiler table of its bf16 training steps: the kernels that take the time, and how
   much of the step the GPU is busy at all;
4. 16 width-32 UNets at 32x32 (N from 1 to 10^4): packed (fused and looped) vs one at a time,
   aggregate images/s;
5. the same 16 models on fractional GPUs (four Ray actors of 0.25 GPU, each training its four one
   at a time, or as a pack of four), started together: aggregate images/s.

Each section prints its own lines and survives the failure of another. `--dry-run` runs every
section at toy sizes on the CPU, to check the script itself where no GPU is.

    python benchmarks/gpu_checks.py [--dry-run] [--compile default]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from gahb_scale.models import build_model
from gahb_scale.training import TrainConfig, train_denoiser, training_flops_per_image
from training_throughput import describe, throughput  # this folder: run as benchmarks/gpu_checks.py

ROOT = Path(__file__).resolve().parents[1]
SIXTEEN_SIZES = tuple(round(10 ** (4 * k / 15)) for k in range(16))  # N = 1 ... 10^4, log-spaced


def section(title: str):
    def run(fn):
        def wrapped(*args, **kwargs):
            print(f"\n== {title}", flush=True)
            started = time.perf_counter()
            try:
                fn(*args, **kwargs)
            except Exception:  # one broken section must not lose the others' numbers
                traceback.print_exc(limit=6)
                print(f"== {title}: FAILED", flush=True)
            print(f"== {title}: {time.perf_counter() - started:.0f} s", flush=True)
        return wrapped
    return run


@section("CUDA tests")
def cuda_tests(args) -> None:
    if args.device != "cuda":
        print("skipped: no CUDA device")
        return
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_gpu.py")],
                   check=False, timeout=240)


@section("paper UNet: images/s and MFU")
def paper_unet(args) -> None:
    kind, params, size, batch = ("unet", {}, 80, 512) if not args.dry_run else ("unet", {"width": 4}, 16, 8)
    flops = training_flops_per_image(build_model(kind, **params), (1, size, size))
    print(f"{kind} {params or 'paper defaults'} {size}x{size} batch {batch}: {flops / 1e9:.2f} GFLOP per image per step; "
          f"before this change (one H100, bf16): 4,018 images/s, fp32 3,131")
    for precision in ("fp32", "bf16"):
        for mode in (None, args.compile):
            result = throughput(kind, params, size, batch, precision, args.device, compile_mode=mode, steps=args.steps)
            print(f"{precision} {'eager' if mode is None else f'compiled ({mode})'}: {describe(result)}", flush=True)


@section("paper UNet: profile of bf16 steps")
def paper_unet_profile(args) -> None:
    from torch.profiler import ProfilerActivity, profile

    kind, params, size, batch = ("unet", {}, 80, 512) if not args.dry_run else ("unet", {"width": 4}, 16, 8)
    images = torch.randint(0, 256, (1000, 1, size, size), dtype=torch.uint8)
    warm = TrainConfig(steps=5, batch_size=batch, log_every=5, precision="bf16")
    train_denoiser(build_model(kind, **params), images, warm, device=args.device)
    steps = 10
    config = TrainConfig(steps=steps, batch_size=batch, log_every=steps, precision="bf16")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    net = build_model(kind, **params)
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        train_denoiser(net, images, config, device=args.device)
        if args.device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - started
    sort = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=60))
    if args.device == "cuda":
        busy = sum(e.self_device_time_total for e in prof.key_averages()) / 1e6
        print(f"{steps} steps: wall {wall:.3f} s, GPU kernels {busy:.3f} s ({busy / wall:.0%} of the wall time busy)")


@section("16 width-32 UNets at 32x32: packed vs one at a time")
def sixteen_small(args) -> None:
    kind, params, size, batch = ("unet", {"width": 32}, 32, 512) if not args.dry_run else ("unet", {"width": 4}, 16, 8)
    sizes = SIXTEEN_SIZES if not args.dry_run else SIXTEEN_SIZES[::4]
    run = dict(kind=kind, params=params, size=size, batch=batch, precision=args.precision, device=args.device,
               steps=args.steps)
    # Alone, every model costs the same per step whatever its N; four of them, N spread, stand for all.
    alone = [throughput(**run, sizes=(n,))["images_per_s"] for n in sizes[::4]]
    one_at_a_time = len(alone) / sum(1 / v for v in alone)  # aggregate rate of running them in turn
    print(f"{len(sizes)} models, N = {sizes[0]}...{sizes[-1]}, {args.precision}: one at a time {one_at_a_time:,.0f} "
          f"images/s (alone: {', '.join(f'{v:,.0f}' for v in alone)})", flush=True)
    for label, fused, mode in (("packed, fused", True, None), ("packed, looped", False, None),
                               (f"packed, fused, compiled ({args.compile})", True, args.compile)):
        result = throughput(**run, sizes=sizes, fused=fused, compile_mode=mode)
        print(f"{label}: {describe(result)}, {result['images_per_s'] / one_at_a_time:.2f}x one at a time "
              f"(target >= 8x)", flush=True)


@section("16 width-32 UNets at 32x32: fractional GPUs (4 x 0.25) vs packing")
def fractional(args) -> None:
    import ray

    kind, params, size, batch = ("unet", {"width": 32}, 32, 512) if not args.dry_run else ("unet", {"width": 4}, 16, 8)
    sizes = SIXTEEN_SIZES if not args.dry_run else SIXTEEN_SIZES[:8]
    share = 0.25
    run = dict(kind=kind, params=params, size=size, batch=batch, precision=args.precision, device=args.device)

    @ray.remote
    class Trainer:
        def __init__(self):
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            throughput(**run, sizes=(1,), steps=2)  # CUDA context, cuDNN autotuning: before the clock

        def train(self, models: tuple[int, ...], packed: bool, steps: int) -> float:
            started = time.perf_counter()
            if packed:
                throughput(**run, sizes=models, fused=True, steps=steps)
            else:
                for n in models:
                    throughput(**run, sizes=(n,), steps=steps)
            return time.perf_counter() - started

    ray.init(address="local", num_cpus=8, num_gpus=1 if args.device == "cuda" else 0, include_dashboard=False,
             log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parent)}})
    try:
        options = {"num_gpus": share} if args.device == "cuda" else {"num_cpus": 1}
        actors = [Trainer.options(**options).remote() for _ in range(round(1 / share))]
        ray.get([a.train.remote((1,), False, 1) for a in actors])  # every actor up before the clock starts
        quarter = len(sizes) // len(actors)
        for packed in (False, True):
            started = time.perf_counter()
            ray.get([a.train.remote(tuple(sizes[i * quarter:(i + 1) * quarter]), packed, args.steps)
                     for i, a in enumerate(actors)])
            wall = time.perf_counter() - started
            images = len(sizes) * 2 * args.steps * batch  # warm-up and timed interval of every model
            print(f"{len(actors)} actors x {share:g} GPU, each {quarter} models {'as one pack' if packed else 'one at a time'}: "
                  f"{images / wall:,.0f} images/s aggregate (warm-up steps included)", flush=True)
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU: checks the script, measures nothing")
    parser.add_argument("--compile", default="default", help="torch.compile mode of the compiled variants")
    parser.add_argument("--precision", default="bf16", help="of the small-model comparisons")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after as many warm-up steps)")
    args = parser.parse_args()
    args.device = "cpu" if args.dry_run else "cuda"
    if args.dry_run:
        args.precision, args.steps = "fp32", 2
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run to check the script on a CPU")
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}")
    started = time.perf_counter()
    for check in (cuda_tests, paper_unet, paper_unet_profile, sixteen_small, fractional):
        check(args)
    print(f"\nall GPU checks: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
