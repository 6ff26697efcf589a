"""Peak signal-to-noise ratio and denoising PSNR curves over a grid of noise levels."""

from __future__ import annotations

from typing import Callable

import torch

# any callable mapping noisy images (B, C, H, W) to clean estimates of the same shape
Denoiser = Callable[[torch.Tensor], torch.Tensor]


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR for peak 1: -10 log10 of the mean squared error over (C, H, W).

    An exact estimate has zero error and gives +inf: no finite number is the right answer, and
    clamping the error would invent one.
    """
    mse = (x - ref).square().flatten(1).mean(dim=1)
    return -10.0 * torch.log10(mse)


@torch.no_grad()
def psnr_curve(denoiser: Denoiser, images: torch.Tensor, sigmas: torch.Tensor, seed: int = 0,
               batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Output PSNR of `denoiser` on `images` corrupted by Gaussian noise at each level of `sigmas`.

    One standard-normal draw per image, made from `seed`, is scaled by every sigma: two denoisers
    evaluated with the same seed see exactly the same noise, and the curve across sigma is not
    jittered by fresh draws (common random numbers). The draw is made for all images at once so it
    does not depend on `batch_size`, which only bounds how many images go through `denoiser`
    together. Runs on the images' device; returns CPU tensors of shape (len(sigmas),):
    `sigma`, `psnr_in` (= -20 log10 sigma), `psnr_out` (mean over images of the per-image PSNR)
    and `psnr_out_std` (their sample standard deviation across images; NaN for a single image, and
    an exact denoiser gives psnr_out = +inf with NaN spread, see `psnr`).
    """
    generator = torch.Generator(device=images.device).manual_seed(seed)
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    sigmas = torch.as_tensor(sigmas, dtype=images.dtype).flatten()
    per_image = torch.empty(len(sigmas), len(images), dtype=torch.float64)
    for k, sigma in enumerate(sigmas.tolist()):
        for start in range(0, len(images), batch_size):
            clean = images[start:start + batch_size]
            noisy = clean + sigma * noise[start:start + batch_size]
            per_image[k, start:start + len(clean)] = psnr(denoiser(noisy), clean).double().cpu()
    return {
        "sigma": sigmas.cpu(),
        "psnr_in": -20.0 * torch.log10(sigmas.cpu()),
        "psnr_out": per_image.mean(dim=1),
        # one image has no spread: NaN, without torch's warning about it
        "psnr_out_std": per_image.std(dim=1) if len(images) > 1 else torch.full((len(sigmas),), torch.nan,
                                                                                 dtype=torch.float64),
    }
