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


@pytest.fixture
def strict_fp32():
    """cuDNN's TF32 convolutions (PyTorch's default) round to 10 mantissa bits: no 1e-5 comparisons."""
    allowed = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = allowed


def test_a_fused_pack_on_cuda_trains_each_model_as_alone(strict_fp32):
    from gahb_scale.packing import ModelPack
    from gahb_scale.training import train_pack

    g = torch.Generator().manual_seed(0)
    images = [(torch.rand(n, 1, 16, 16, generator=g) * 255).to(torch.uint8) for n in (1, 7, 40)]
    configs = [TrainConfig(steps=50, batch_size=16, lr=3e-3, log_every=10, seed=s) for s in (1, 2, 3)]
    nets = lambda: [build_model("unet", seed=s, width=8, blocks=2) for s in (1, 2, 3)]  # noqa: E731
    solo = [train_denoiser(n, x, c, device="cuda") for n, x, c in zip(nets(), images, configs)]
    packed = train_pack(ModelPack(nets(), fused=True), images, configs, device="cuda")
    for alone, together in zip(solo, packed):
        for name, value in alone.net.state_dict().items():
            assert torch.allclose(value, together.net.state_dict()[name], rtol=0, atol=1e-4), name


def test_a_compiled_pack_trains_and_reports_throughput():
    from gahb_scale.packing import ModelPack
    from gahb_scale.training import train_pack

    images = [torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    configs = [TrainConfig(steps=200, batch_size=32, lr=3e-3, log_every=50, lr_halve_every=100, precision="bf16",
                           seed=k) for k in range(4)]
    logs = []
    results = train_pack(ModelPack([build_model("unet", seed=k, width=16, blocks=2) for k in range(4)], fused=True),
                         images, configs, device="cuda", compile_mode="default", on_log=lambda s, m: logs.append(m))
    for result in results:
        assert result.losses[-1][1] < 0.5 * result.losses[0][1]
    assert all(m["images_per_s"] > 0 for m in logs)
    name = torch.cuda.get_device_name()
    if any(key in name for key in ("H100", "H200", "A100")):
        assert all(0 < m["mfu"] < 1 for m in logs)
