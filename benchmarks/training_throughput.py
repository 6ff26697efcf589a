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


def images_per_second(args, precision: str) -> float:
    images = torch.rand(1000, 1, args.size, args.size)
    net = build_model(args.arch, seed=0, width=args.width)
    warm = TrainConfig(steps=3, batch_size=args.batch, log_every=3, precision=precision)
    train_denoiser(net, images, warm, device=args.device)  # warm-up: cuDNN autotuning, allocator
    config = TrainConfig(steps=args.steps, batch_size=args.batch, log_every=args.steps, precision=precision)
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train_denoiser(build_model(args.arch, seed=0, width=args.width), images, config, device=args.device)
    if args.device == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch / (time.perf_counter() - start)


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
    fp32 = images_per_second(args, "fp32")
    print(f"fp32: {fp32:,.0f} images/s")
    if args.device == "cuda":
        bf16 = images_per_second(args, "bf16")
        print(f"bf16 autocast: {bf16:,.0f} images/s ({bf16 / fp32:.2f}x fp32)")


if __name__ == "__main__":
    main()
