"""Training throughput of a blind denoiser (images per second), fp32 vs bf16 autocast, side by side.

Used to budget studies: steps × batch / throughput is the training time of one trial.

    python benchmarks/training_throughput.py [--device cuda] [--size 80] [--width 64] [--batch 512]
"""

from __future__ import annotations

import argparse
import time

import torch

from gahb_scale.models import build_model, count_parameters
from gahb_scale.training import TrainConfig, train_denoiser


def images_per_second(kind: str, params: dict, size: int, batch: int, precision: str, device: str,
                      steps: int = 20) -> float:
    """Training images per second of a fresh `kind(**params)` network, timed after a warm-up run
    that pays cuDNN autotuning and the allocator's first requests."""
    images = torch.rand(1000, 1, size, size)
    warm = TrainConfig(steps=3, batch_size=batch, log_every=3, precision=precision)
    train_denoiser(build_model(kind, seed=0, **params), images, warm, device=device)
    config = TrainConfig(steps=steps, batch_size=batch, log_every=steps, precision=precision)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train_denoiser(build_model(kind, seed=0, **params), images, config, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    params = count_parameters(build_model(args.arch, width=args.width))
    print(f"device={args.device} {args.arch} width={args.width} ({params:,} parameters) {args.size}x{args.size} "
          f"batch={args.batch} steps={args.steps}")
    model = (args.arch, {"width": args.width}, args.size, args.batch)
    fp32 = images_per_second(*model, "fp32", args.device, args.steps)
    print(f"fp32: {fp32:,.0f} images/s")
    if args.device == "cuda":
        bf16 = images_per_second(*model, "bf16", args.device, args.steps)
        print(f"bf16 autocast: {bf16:,.0f} images/s ({bf16 / fp32:.2f}x fp32)")


if __name__ == "__main__":
    main()
