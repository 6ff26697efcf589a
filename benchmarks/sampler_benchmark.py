"""Sampler throughput: 64 samples in one batch vs the same 64 samples one at a time.

Both runs use the same seeds, so they must return the same samples (per-sample noise streams);
the script checks that and prints the speed-up measured side by side. Every sample runs the same
fixed number of steps (sigma_L = 0 with a step cap), so both sides do exactly the same work.

    python benchmarks/sampler_benchmark.py [--device cuda] [--size 32] [--width 32]
"""

from __future__ import annotations

import argparse
import time

import torch

from gahb_scale.models import build_model
from gahb_scale.sampling import sample_kadkhodaie_simoncelli


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--width", type=int, default=16, help="UNet base width (the paper's is 64)")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--beta", type=float, default=0.5)
    args = parser.parse_args()
    device = torch.device(args.device)

    net = build_model("unet", seed=0, width=args.width, blocks=2).to(device)
    with torch.no_grad():  # settle the BF batch-norm running std
        for _ in range(20):
            net(torch.rand(16, 1, args.size, args.size, device=device))
    net.eval()
    seeds = list(range(args.samples))
    run = dict(image_shape=(1, args.size, args.size), beta=args.beta, sigma_L=0.0, max_steps=args.steps, device=device)

    sample_kadkhodaie_simoncelli(net, seeds=seeds[:2], **run)  # warm-up
    batched, t_batched = timed(lambda: sample_kadkhodaie_simoncelli(net, seeds=seeds, **run), device)
    singles, t_single = timed(lambda: [sample_kadkhodaie_simoncelli(net, seeds=[s], **run) for s in seeds], device)
    one_by_one = torch.cat([r.samples for r in singles])
    diff = (batched.samples - one_by_one).abs().max().item()

    target = 20 if device.type == "cuda" else 4
    ratio = t_single / t_batched
    print(f"device={device} size={args.size} width={args.width} samples={args.samples} steps={args.steps} beta={args.beta}")
    print(f"batched: {t_batched:.2f} s   one at a time: {t_single:.2f} s   max |difference| of samples: {diff:.2e}")
    print(f"sampler batched vs one-at-a-time: {ratio:.1f}x (target >= {target}x) {'PASS' if ratio >= target else 'MISS'}")


if __name__ == "__main__":
    main()
