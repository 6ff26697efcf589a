"""CPU training step of a pack in the two weight layouts, side by side: contiguous against
channels-last (`ModelPack.channels_last_`, which `train_pack` applies on CPU).

Each side is timed `--repeats` times, alternating, and the median of each is reported:

    python benchmarks/cpu_weight_layout.py [--batches 8 16 32] [--pack 4] [--size 16] [--width 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gahb_scale.models import build_model
from gahb_scale.packing import ModelPack
from gahb_scale.training import residual_loss


def seconds_per_step(pack: ModelPack, batch: int, size: int, steps: int) -> float:
    optimizer = torch.optim.Adam(pack.parameters(), lr=1e-3)
    clean = torch.rand(pack.k, batch, 1, size, size)
    sigma, noise = torch.full((pack.k, batch, 1, 1, 1), 0.1), torch.randn_like(clean)
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        residual_loss(pack, clean, sigma, noise).sum().backward()
        optimizer.step()
    return (time.perf_counter() - started) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--pack", type=int, default=4, help="models per pack")
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a study trial's one CPU
    print(f"pack of {args.pack} UNets, width {args.width}, {args.blocks} blocks, {args.size}x{args.size}, one thread; "
          f"median of {args.repeats} runs of {args.steps} steps")
    for batch in args.batches:
        packs = {layout: ModelPack([build_model("unet", seed=k, width=args.width, blocks=args.blocks)
                                    for k in range(args.pack)], fused=False).train()
                 for layout in ("contiguous", "channels-last")}
        packs["channels-last"].channels_last_()
        times = {layout: [] for layout in packs}
        for _ in range(args.repeats + 1):  # the first round warms up
            for layout, pack in packs.items():
                times[layout].append(seconds_per_step(pack, batch, args.size, args.steps))
        rates = {layout: args.pack * batch / statistics.median(t[1:]) for layout, t in times.items()}
        print(f"batch {batch:3d}: contiguous {rates['contiguous']:6.0f} images/s, channels-last "
              f"{rates['channels-last']:6.0f} images/s, ratio {rates['channels-last'] / rates['contiguous']:.2f}",
              flush=True)


if __name__ == "__main__":
    main()
