"""Training throughput of blind denoisers (images/s and MFU, as the trainer reports them), side by side.

`throughput` times a training run of a pack of K models (K = 1: one model) after a warm-up
interval of the same length, which pays cuDNN autotuning, the allocator's first requests and any
`torch.compile`. The command line compares fp32 and bf16 autocast, eager and compiled, for one
architecture:

    python benchmarks/training_throughput.py [--device cuda] [--arch unet] [--size 80] [--width 64]
        [--batch 512] [--steps 20] [--compile default]
"""

from __future__ import annotations

import argparse

import torch

from gahb_scale.models import build_model, count_parameters
from gahb_scale.packing import ModelPack
from gahb_scale.training import TrainConfig, train_pack, training_flops_per_image


def throughput(kind: str, params: dict, size: int, batch: int, precision: str, device: str, sizes=(1000,),
               fused: bool | None = None, compile_mode: str | None = None, steps: int = 20) -> dict:
    """{"images_per_s", "mfu" (None where the device's peak is unknown)} of a pack of
    `len(sizes)` fresh `kind(**params)` networks, network k on sizes[k] random images, over the
    `steps` steps that follow `steps` warm-up steps."""
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8) for n in sizes]
    nets = [build_model(kind, seed=k, **params) for k in range(len(sizes))]
    configs = [TrainConfig(steps=2 * steps, batch_size=batch, log_every=steps, precision=precision, seed=k)
               for k in range(len(sizes))]
    logs = []
    train_pack(ModelPack(nets, fused=fused), images, configs, device=device, compile_mode=compile_mode,
               on_log=lambda step, metrics: logs.append(metrics))
    return {"images_per_s": logs[-1]["images_per_s"], "mfu": logs[-1].get("mfu")}


def describe(result: dict) -> str:
    mfu = f", MFU {result['mfu']:.1%}" if result["mfu"] is not None else ""
    return f"{result['images_per_s']:,.0f} images/s{mfu}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", default=None, help="also time the step under torch.compile with this mode")
    args = parser.parse_args()
    params = {"width": args.width}
    net = build_model(args.arch, **params)
    flops = training_flops_per_image(net, (1, args.size, args.size))
    print(f"device={args.device} {args.arch} width={args.width} ({count_parameters(net):,} parameters) "
          f"{args.size}x{args.size} batch={args.batch} steps={args.steps}: {flops / 1e9:.2f} GFLOP per image per step")
    model = (args.arch, params, args.size, args.batch)
    precisions = ["fp32", "bf16"] if args.device == "cuda" else ["fp32"]
    for precision in precisions:
        for mode in [None, args.compile] if args.compile else [None]:
            result = throughput(*model, precision, args.device, compile_mode=mode, steps=args.steps)
            print(f"{precision} {'eager' if mode is None else f'compiled ({mode})'}: {describe(result)}", flush=True)


if __name__ == "__main__":
    main()
