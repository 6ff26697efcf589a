"""How far is a trained denoiser's Jacobian from a symmetric one, and what lowers the gap at CPU scale?

An MMSE denoiser's Jacobian is σ² × a posterior covariance, hence symmetric; ‖J − Jᵀ‖_F / ‖J‖_F
measures how far a network is from being one. This script trains variants of the smoke study's
model (bias-free UNet, width 16, 2 blocks, 16x16 discs, N = 1000, 400 steps of batch 64) in this
process, one change at a time (training length, learning rate, batch, width, depth, architecture,
training noise range, N, image size), and prints for each the asymmetry of its Jacobian at noisy held-out discs
next to its held-out PSNR and tr J, all measured side by side in one run, and the same for an exact
blind MMSE denoiser as a reference.

    python benchmarks/jacobian_symmetry.py [--only NAME ...] [--threads 1]
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import torch

from gahb_scale.analysis import (GaussianDenoiser, denoiser_jacobian, effective_dimensionality, psnr_curve,
                                 symmetry_error, training_noise_prior)
from gahb_scale.data import disc_images
from gahb_scale.models import build_model, count_parameters, denoise
from gahb_scale.training import TrainConfig, train_denoiser

BASE = {"arch": "unet", "params": {"width": 16, "blocks": 2}, "steps": 400, "batch_size": 64, "lr": 5e-3,
        "lr_halve_every": 150, "noise_range": (0.0, 255.0), "size": 16, "n": 1000}
VARIANTS = {  # name -> changes to BASE
    "smoke (base)": {},
    "4x steps": {"steps": 1600, "lr_halve_every": 600},
    "10x steps": {"steps": 4000, "lr_halve_every": 1500},
    "lr 1e-3": {"lr": 1e-3},
    "batch 256": {"batch_size": 256},
    "width 32": {"params": {"width": 32, "blocks": 2}},
    "width 64": {"params": {"width": 64, "blocks": 2}},
    "3 blocks": {"params": {"width": 16, "blocks": 3}},
    "BF-CNN 21 layers, width 32": {"arch": "bfcnn", "params": {"width": 32, "layers": 21}},
    "noise range 0-100": {"noise_range": (0.0, 100.0)},
    "N = 10,000": {"n": 10_000},
    "32x32 discs": {"size": 32},
    "10x steps, width 32": {"steps": 4000, "lr_halve_every": 1500, "params": {"width": 32, "blocks": 2}},
}
SIGMAS = (5.0, 25.0, 100.0)  # grey levels


def discs(setup: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(training discs, held-out discs) of the setup's size and N."""
    return disc_images(setup["n"], setup["size"], seed=0)[0], disc_images(64, setup["size"], seed=2)[0]


def trained(setup: dict, train: torch.Tensor) -> tuple[torch.nn.Module, float]:
    net = build_model(setup["arch"], seed=0, **setup["params"])
    config = TrainConfig(steps=setup["steps"], batch_size=setup["batch_size"], lr=setup["lr"],
                         lr_halve_every=setup["lr_halve_every"], noise_range=setup["noise_range"],
                         log_every=setup["steps"], seed=1)
    started = time.perf_counter()
    train_denoiser(net, train, config, device="cpu")
    return net.eval(), time.perf_counter() - started


def reference(train: torch.Tensor) -> torch.nn.Module:
    """An exact blind MMSE denoiser, what a blind network can reach at best: blindness alone makes J
    asymmetric, since the posterior of σ given y moves with y (J gains Σ_k f_k(y) ∇p(σ_k|y)ᵀ). (The
    blind memorizer is no use here: on held-out discs it snaps to a training disc, J ≈ 0.)"""
    grid, _ = training_noise_prior()
    flat = train.double().flatten(1)
    return GaussianDenoiser(flat.mean(0), torch.cov(flat.T), sigma_grid=grid)


def measure(name: str, residual: torch.nn.Module, test: torch.Tensor, seconds: float | None = None) -> dict:
    f = functools.partial(denoise, residual)
    clean = test[:4]
    generator = torch.Generator().manual_seed(0)
    row = {"variant": name, "parameters": count_parameters(residual),
           "train_seconds": None if seconds is None else round(seconds, 1)}
    psnr = psnr_curve(f, test, torch.tensor(SIGMAS) / 255.0, seed=0)["psnr_out"]
    for sigma, out in zip(SIGMAS, psnr.tolist()):
        noisy = clean + sigma / 255.0 * torch.randn(clean.shape, generator=generator)
        jacobian = denoiser_jacobian(f, noisy, chunk_size=64)
        row[f"asym@{sigma:g}"] = round(float(symmetry_error(jacobian).mean()), 3)
        # the absolute size of the antisymmetric part and of J: which of the two moves
        row[f"|J-J'|@{sigma:g}"] = round(float(torch.linalg.matrix_norm(jacobian - jacobian.mT).mean()), 2)
        row[f"|J|@{sigma:g}"] = round(float(torch.linalg.matrix_norm(jacobian).mean()), 2)
        row[f"trJ@{sigma:g}"] = round(float(effective_dimensionality(jacobian).mean()), 1)
        row[f"psnr@{sigma:g}"] = round(out, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="variant names to train (default: all; none: only the references)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, changes in VARIANTS.items():
        if args.only is not None and name not in args.only:
            continue
        setup = {**BASE, **changes}
        train, test = discs(setup)
        net, seconds = trained(setup, train)
        rows.append(measure(name, net, test, seconds))
        print(json.dumps(rows[-1]), flush=True)
    train, test = discs(BASE)
    rows.append(measure("reference: blind MMSE of a Gaussian fit to the training discs", reference(train),
                        test.double()))
    print(json.dumps(rows[-1]), flush=True)
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
