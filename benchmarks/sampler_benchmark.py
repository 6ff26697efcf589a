"""Sampler throughput: 64 samples in one batch vs the same 64 samples one at a time.

Both sides use the same seeds, so they must return the same samples (per-sample noise streams);
the script checks that and prints the speed-up measured side by side. Every sample runs the same
fixed number of steps (sigma_L = 0 with a step cap), so both sides do exactly the same work.

It measures two image sizes: 16x16, where every CPU study but calpha_cpu samples, and 32x32. The
batching gain is the network's: one image's pass through a small UNet at 16x16 is mostly the fixed
cost of each layer, and a second thread speeds up only the batch, so two idle cores give ~5x; at
32x32 one image is already a core's worth of work, and they give ~2x (see docs/benchmarks.md).

The two sides alternate `--repeats` times and the ratio is that of their medians: a single timing
on a machine shared with other jobs swings by 2x or more. The load average is printed with it,
since it moves the ratio: other jobs slow the one-at-a-time side (many tiny multi-threaded ops)
far more than the batched one.

More lines per size say where the time goes: the network alone, one batch of 64 against 64
batches of one (the most batching can give the sampler, since the network is nearly all of its
work), the same single passes on one CPU thread (on two, one image's pass runs in a fast mode or in
one about 2x slower, which lasts for seconds; on one thread it runs steadily, about as fast as the
fast mode), and the sampler around a network-free residual (its own bookkeeping and noise draws).

    python benchmarks/sampler_benchmark.py [--device cuda] [--sizes 16 32] [--width 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def median_seconds(fn, device, repeats):
    return statistics.median(timed(fn, device)[1] for _ in range(repeats))


def measure(size, args, device, target):
    """Print the batched / one-at-a-time comparison at one image size; return its ratio."""
    net = build_model("unet", seed=0, width=args.width, blocks=2).to(device)
    with torch.no_grad():  # settle the BF batch-norm running std
        for _ in range(20):
            net(torch.rand(16, 1, size, size, device=device))
    net.eval()
    seeds = list(range(args.samples))
    run = dict(image_shape=(1, size, size), beta=args.beta, sigma_L=0.0, max_steps=args.steps, device=device)

    sample_kadkhodaie_simoncelli(net, seeds=seeds[:2], **run)  # warm-up
    t_batched, t_single = [], []
    for _ in range(args.repeats):
        batched, seconds = timed(lambda: sample_kadkhodaie_simoncelli(net, seeds=seeds, **run), device)
        t_batched.append(seconds)
        singles, seconds = timed(lambda: [sample_kadkhodaie_simoncelli(net, seeds=[s], **run) for s in seeds], device)
        t_single.append(seconds)
    one_by_one = torch.cat([r.samples for r in singles])
    diff = (batched.samples - one_by_one).abs().max().item()

    x = torch.rand(args.samples, 1, size, size, device=device)
    one_at_a_time = lambda: [net(x[i:i + 1]) for i in range(args.samples)]
    with torch.no_grad():
        net_batched = median_seconds(lambda: net(x), device, args.repeats)
        net_single = median_seconds(one_at_a_time, device, args.repeats)
        if device.type == "cpu":  # one image's pass on two threads runs in a fast or a ~2x slower mode; on one, steadily
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            net_single_one_thread = median_seconds(one_at_a_time, device, args.repeats)
            torch.set_num_threads(threads)
    shrink = lambda y: 0.5 * (y - 0.5)  # a residual with no network: the sampler's own cost
    own_batched = median_seconds(lambda: sample_kadkhodaie_simoncelli(shrink, seeds=seeds, **run), device, args.repeats)

    median_batched, median_single = statistics.median(t_batched), statistics.median(t_single)
    ratio = median_single / median_batched
    forwards = args.samples * (args.steps + 1)  # one network pass per sample and step, and the final denoising
    print(f"\nsize={size}: load average={os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"batched: median {median_batched:.2f} s ({1e3 * median_batched / forwards:.2f} ms per sample-step; "
          f"all {', '.join(f'{t:.2f}' for t in t_batched)})")
    print(f"one at a time: median {median_single:.2f} s ({1e3 * median_single / forwards:.2f} ms per sample-step; "
          f"all {', '.join(f'{t:.2f}' for t in t_single)})")
    print(f"max |difference| of samples: {diff:.2e}")
    print(f"the network alone, one batch of {args.samples} vs one at a time: {net_single / net_batched:.1f}x "
          f"({1e3 * net_batched / args.samples:.2f} vs {1e3 * net_single / args.samples:.2f} ms per sample)")
    if device.type == "cpu":
        print(f"the network alone, one at a time on one thread: {1e3 * net_single_one_thread / args.samples:.2f} ms "
              f"per sample, {net_single_one_thread / net_batched:.1f}x the batched pass on {torch.get_num_threads()}")
    print(f"the sampler without a network: {1e3 * own_batched / forwards:.3f} ms per sample-step batched, "
          f"{100 * own_batched / median_batched:.1f}% of the batched run")
    print(f"sampler batched vs one-at-a-time at {size}x{size}: {ratio:.1f}x (median of {args.repeats}; "
          f"target >= {target}x) {'PASS' if ratio >= target else 'MISS'}")
    return ratio


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32], help="image sizes, each measured on its own")
    parser.add_argument("--width", type=int, default=16, help="UNet base width (the paper's is 64)")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5, help="timings of each side; the medians are compared")
    args = parser.parse_args()
    device = torch.device(args.device)
    target = 20 if device.type == "cuda" else 4
    print(f"device={device} threads={torch.get_num_threads()} width={args.width} samples={args.samples} "
          f"steps={args.steps} beta={args.beta} repeats={args.repeats}")
    ratios = {size: measure(size, args, device, target) for size in args.sizes}
    print("\nsummary: " + ", ".join(f"{size}x{size} {ratio:.1f}x" for size, ratio in ratios.items())
          + f" (target >= {target}x)")


if __name__ == "__main__":
    main()
