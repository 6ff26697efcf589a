"""The CUDA code paths; skipped where no GPU is present (CI), run on GPU machines."""

import pytest
import torch

from gahb_scale.models import build_model
from gahb_scale.sampling import sample_kadkhodaie_simoncelli
from gahb_scale.training import TrainConfig, train_denoiser

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_on_cuda_reduces_the_loss(precision):
    images = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=200, batch_size=32, lr=3e-3, log_every=50, lr_halve_every=100, precision=precision)
    result = train_denoiser(build_model("unet", seed=0, width=16, blocks=2), images, config, device="cuda")
    assert next(result.net.parameters()).is_cuda
    assert result.losses[-1][1] < 0.5 * result.losses[0][1]


def test_sampler_on_cuda_matches_cpu():
    net = build_model("unet", seed=0, width=8, blocks=1)
    with torch.no_grad():
        for _ in range(20):
            net(torch.rand(8, 1, 8, 8))
    net.eval()
    run = dict(image_shape=(1, 8, 8), seeds=[1, 2, 3], beta=0.5, h0=0.1, sigma_L=0.0, max_steps=15)
    cpu = sample_kadkhodaie_simoncelli(net, device="cpu", **run)
    gpu = sample_kadkhodaie_simoncelli(net.cuda(), device="cuda", **run)
    assert torch.allclose(cpu.samples, gpu.samples.cpu(), atol=1e-3)
