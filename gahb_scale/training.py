"""One blind-denoiser training run, as in Kadkhodaie et al. (ICLR 2024).

Per image a noise level σ is drawn from the whole range and never shown to the network, which
learns to predict the noise (residual loss). The number of gradient steps is fixed and does not
depend on N: the N training images are tiled (every image shown once per pass, in a new random
order each pass) so that every training-set size sees the same amount of optimisation.

Everything random is drawn from generators whose state goes into the checkpoint, so a run that is
interrupted and resumed from a checkpoint ends with exactly the weights of an uninterrupted run
(on CPU; CUDA kernels may not be bitwise deterministic).
"""

from __future__ import annotations

import copy
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .atomic import write_atomically
from .data.transforms import to_float_images
from .errors import UserInputError
from .flops import peak_flops
from .packing import ModelPack
from .training_config import TrainConfig


def draw_noise_levels(batch: int, noise_range: tuple[float, float], schedule: str, generator: torch.Generator,
                      device: torch.device) -> torch.Tensor:
    """σ per image, shape (batch, 1, 1, 1), in [0, 1] image units.

    quadratic: σ = ((u·(√b − √a) + √a)²)/255 puts more images at low noise, where the denoiser
    is hardest to get right; linear: σ = (u·(b − a) + a)/255.
    """
    a, b = noise_range
    u = torch.rand(batch, 1, 1, 1, generator=generator, device=device)
    if schedule == "quadratic":
        return (u * (math.sqrt(b) - math.sqrt(a)) + math.sqrt(a)) ** 2 / 255.0
    return (u * (b - a) + a) / 255.0


class TiledBatches:
    """Batches of training-image indices: a fresh random permutation of range(N) per pass.

    Showing each image once per pass (rather than drawing with replacement) is the paper's tiling;
    for N = 1 every batch is the one image repeated.
    """

    def __init__(self, n: int, seed: int):
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(n, generator=self.generator)
        self.position = 0

    def next(self, batch_size: int) -> torch.Tensor:
        parts, needed = [], batch_size
        while needed:
            if self.position == self.n:
                self.order = torch.randperm(self.n, generator=self.generator)
                self.position = 0
            take = min(needed, self.n - self.position)
            parts.append(self.order[self.position:self.position + take])
            self.position += take
            needed -= take
        return torch.cat(parts)

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state(), "order": self.order, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng"])
        self.order, self.position = state["order"], state["position"]


def residual_loss(net: nn.Module, clean: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Σ‖net(x + σz) − σz‖² / batch: the network predicts the noise it is given.

    A scalar for one network's (B, C, H, W) batch; a (K,) vector, one loss per network, for a
    pack's (K, B, C, H, W) batches.
    """
    target = sigma * noise
    return ((net(clean + target) - target) ** 2).flatten(-3).sum(-1).sum(-1) / clean.shape[-4]


def training_flops_per_image(net: nn.Module, image_shape: tuple[int, ...]) -> float:
    """FLOPs of one training step per image: forward and backward of the residual loss, counted by
    `torch.utils.flop_counter` on a CPU copy of `net` (its weights and statistics are not touched)."""
    net = copy.deepcopy(net).cpu().train()
    images = torch.rand(2, *image_shape)
    with FlopCounterMode(display=False) as counter:
        residual_loss(net, images, torch.full((2, 1, 1, 1), 0.1), torch.randn_like(images)).backward()
    return counter.get_total_flops() / len(images)


@dataclass
class TrainResult:
    net: nn.Module
    steps_done: int
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since last log)
    resumed_from: int = 0  # step of the checkpoint the run resumed from (0 = fresh start)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomically(path, buffer.getvalue())


def _shared_settings(configs: list[TrainConfig]) -> TrainConfig:
    """The pack's one schedule: its models may differ in their seed only."""
    first = configs[0].model_dump(exclude={"seed"})
    for config in configs[1:]:
        if config.model_dump(exclude={"seed"}) != first:
            raise ValueError("the models of a pack must share every training setting but the seed")
    return configs[0]


def train_pack(pack: nn.Module, images: list[torch.Tensor], configs: list[TrainConfig],
               device: str | torch.device | None = None, checkpoint_path: str | Path | None = None,
               on_log: Callable[[int, dict], None] | None = None,
               on_checkpoint: Callable[[int, Path], None] | None = None,
               on_snapshot: Callable[[int, int, nn.Module], None] | None = None,
               shard: tuple[int, int] = (0, 1), compile_mode: str | None = None) -> list[TrainResult]:
    """Train the K networks of `pack` (a `ModelPack`) as blind denoisers, network k on `images[k]`
    (N_k, C, H, W) — float in [0, 1], or uint8 (0…255, converted batch by batch) — with `configs[k]`.

    Every network is trained exactly as it would be alone: its own data, its own batch order,
    σ draws and noise (generators seeded by its config's seed), its own Adam state. The configs
    may differ in their seed only; one schedule runs them all.

    If `checkpoint_path` exists the run resumes from it; a checkpoint is written there every
    `checkpoint_every` steps and at the end. `on_log(step, metrics)` receives every `log_every`
    steps the mean loss of each network since the last log ("losses"), the learning rate, the
    pack's training images per second and, on a device whose peak is known, the model FLOP
    utilisation ("mfu"); `on_checkpoint(step, path)` is called after each checkpoint is written;
    `on_snapshot(step, k, net)` receives network k (a copy) at each of `snapshot_steps`, before
    that step's checkpoint, so a resumed run never skips a snapshot. With `average_last` > 0 the
    networks end with the mean of their weights over the last steps; snapshots hold the weights
    of their own step.

    Data-parallel training passes `shard=(rank, world_size)` and a DDP-wrapped pack: every rank
    draws the same global batches and noise from the same generators and keeps its slice, and a
    checkpoint of rank 0 resumes every rank. The averaged gradient is not exactly the
    single-process one: each rank's BF batch-norm divides by the std of its own slice (and DDP
    hands rank 0's running std to every rank).

    `compile_mode` runs the step's forward and backward through `torch.compile` with that mode
    ("default", "max-autotune", ...); None runs eagerly.
    """
    rank, world = shard
    module = getattr(pack, "module", pack)  # DistributedDataParallel keeps the model in .module
    k_models = module.k
    if not len(images) == len(configs) == k_models:
        raise ValueError(f"a pack of {k_models} networks needs {k_models} image sets and configs, got "
                         f"{len(images)} and {len(configs)}")
    config = _shared_settings(configs)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # The whole training set lives on the device: at the paper's sizes it fits, and per-step host
    # to device copies would dominate the step time of these small networks. uint8 images (0…255)
    # stay uint8 there, a quarter of the memory, and each batch is converted as it is drawn.
    images = [x.to(device) if x.dtype == torch.uint8 else x.to(device=device, dtype=torch.float32) for x in images]
    pack.to(device).train()
    if device.type == "cpu" and module is pack:  # a DDP-wrapped pack keeps the layout DDP's buckets were built for
        module.channels_last_()
    # Adam is elementwise, so one optimizer over the stacked weights is K independent Adams.
    optimizer = torch.optim.Adam(pack.parameters(), lr=config.lr, fused=device.type == "cuda")
    batches = [TiledBatches(x.shape[0], c.seed) for x, c in zip(images, configs)]
    noise_rngs = [torch.Generator(device=device).manual_seed(c.seed + 1) for c in configs]
    step, losses = 0, [[] for _ in configs]
    saved_configs = [c.recorded() for c in configs]
    # Polyak averaging: the running mean of every floating-point weight and buffer (BF batch-norm's
    # running std included) over the last steps; one extra copy of the pack
    average_from = config.steps - round(config.average_last * config.steps)
    averaged = None

    if checkpoint_path is not None and Path(checkpoint_path).exists():
        # on the CPU: the batch-order generators and orders live there (the optimizer and the
        # module copy their tensors to the parameters' device)
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if state["configs"] != saved_configs:
            raise UserInputError(f"checkpoint {checkpoint_path} was written with another training config; "
                                 "remove it or restore the config")
        module.load_state_dict(state["pack"])
        optimizer.load_state_dict(state["optimizer"])
        for b, saved in zip(batches, state["batches"]):
            b.load_state_dict(saved)
        for rng, saved in zip(noise_rngs, state["noise_rngs"]):
            rng.set_state(saved)
        step, losses = state["step"], state["losses"]
        running, since_log = state["running_loss"].to(device), state["since_log"]
        if state.get("averaged") is not None:
            averaged = {name: value.to(device) for name, value in state["averaged"].items()}
    else:
        running = torch.zeros(k_models, device=device)  # summed on device: no host sync every step
        since_log = 0
    resumed_from = step

    step_model = pack if compile_mode is None else torch.compile(pack, mode=compile_mode)
    use_bf16 = config.precision == "bf16" and device.type == "cuda"
    image_shape = images[0].shape[1:]
    peak = peak_flops(device, config.precision)
    flops = training_flops_per_image(module.network(0), image_shape) if peak else None
    clock, clock_step = time.perf_counter(), step  # images/s over the steps this process ran
    while step < config.steps:
        for group in optimizer.param_groups:
            group["lr"] = config.lr * 0.5 ** (step // config.lr_halve_every)
        drawn = [x[b.next(config.batch_size).to(device)] for x, b in zip(images, batches)]
        # each model's batch converted on its own: a pack may hold uint8 photographs beside float
        # discs, and stacking them first would promote the uint8 ones to float unscaled (0…255)
        clean = torch.stack([to_float_images(d) if d.dtype == torch.uint8 else d for d in drawn])[:, rank::world]
        sigma = torch.stack([draw_noise_levels(config.batch_size, config.noise_range, config.noise_schedule, rng, device)
                             for rng in noise_rngs])[:, rank::world]
        noise = torch.stack([torch.randn((config.batch_size, *image_shape), generator=rng, device=device)
                             for rng in noise_rngs])[:, rank::world]
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_bf16):
            loss = residual_loss(step_model, clean, sigma, noise)  # (K,): model k's gradient is its own loss's
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        step += 1
        running += loss.detach().float()
        since_log += 1
        if step > average_from:
            current = {name: value.detach() for name, value in module.state_dict().items() if value.is_floating_point()}
            if averaged is None:
                averaged = {name: value.clone() for name, value in current.items()}
            else:
                for name, value in averaged.items():
                    value.lerp_(current[name], 1.0 / (step - average_from))

        if step % config.log_every == 0 or step == config.steps:
            mean_losses = (running / since_log).tolist()  # the one host sync per log interval
            now = time.perf_counter()
            per_second = k_models * config.batch_size * (step - clock_step) / (now - clock)
            clock, clock_step = now, step
            for history, value in zip(losses, mean_losses):
                history.append((step, value))
            if on_log is not None:
                metrics = {"losses": mean_losses, "lr": optimizer.param_groups[0]["lr"], "images_per_s": per_second}
                if peak:
                    metrics["mfu"] = per_second * flops / (peak * world)
                on_log(step, metrics)
            running.zero_()
            since_log = 0
        if on_snapshot is not None and step in config.snapshot_steps:
            for k in range(k_models):
                on_snapshot(step, k, module.network(k))
        if checkpoint_path is not None and (step % config.checkpoint_every == 0 or step == config.steps):
            save_checkpoint(checkpoint_path, {
                "pack": module.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "batches": [b.state_dict() for b in batches], "noise_rngs": [rng.get_state() for rng in noise_rngs],
                "losses": losses, "running_loss": running, "since_log": since_log, "configs": saved_configs,
                "averaged": averaged,
            })
            if on_checkpoint is not None:
                on_checkpoint(step, Path(checkpoint_path))

    if averaged is not None:  # snapshots above kept the trajectory's own weights
        module.load_state_dict({**module.state_dict(), **averaged})
    pack.eval()
    return [TrainResult(net=module.network(k).eval(), steps_done=step, losses=losses[k], resumed_from=resumed_from)
            for k in range(k_models)]


def train_denoiser(net: nn.Module, images: torch.Tensor, config: TrainConfig, device: str | torch.device | None = None,
                   checkpoint_path: str | Path | None = None,
                   on_log: Callable[[int, dict], None] | None = None,
                   on_checkpoint: Callable[[int, Path], None] | None = None,
                   on_snapshot: Callable[[int, nn.Module], None] | None = None) -> TrainResult:
    """Train one network `net` (a residual network) as a blind denoiser of `images`: `train_pack`
    with a pack of one. `on_log(step, metrics)` gets the mean loss since the last log ("loss"),
    the learning rate and the training images per second; `on_snapshot(step, net)` the network
    at each of `snapshot_steps`. `net` itself ends with the trained weights, in eval mode."""
    log = None if on_log is None else lambda step, m: on_log(step, {**m, "loss": m["losses"][0]})
    snapshot = None if on_snapshot is None else lambda step, k, module: on_snapshot(step, module)
    [result] = train_pack(ModelPack([net]), [images], [config], device=device, checkpoint_path=checkpoint_path,
                          on_log=log, on_checkpoint=on_checkpoint, on_snapshot=snapshot)
    net.load_state_dict(result.net.state_dict())
    result.net = net.to(next(result.net.parameters()).device).eval()
    return result
