"""Packed training: K networks trained as one module end exactly where each would alone."""

from __future__ import annotations

import pytest
import torch
from interrupt import train_until_first_checkpoint

from gahb_scale.models import build_model
from gahb_scale.packing import ModelPack
from gahb_scale.training import TrainConfig, train_denoiser, train_pack

SIZES = (1, 5, 12)  # every model its own N
SEEDS = (3, 11, 29)  # and its own initial weights, batch order, σ draws and noise


def nets(kind="unet", **params):
    params = params or {"width": 4, "blocks": 1}
    return [build_model(kind, seed=s, **params) for s in SEEDS]


def image_sets(size=8):
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(n, 1, size, size, generator=g) * 255).to(torch.uint8) for n in SIZES]


def configs(steps=50, **kw):
    return [TrainConfig(steps=steps, batch_size=6, lr=3e-3, lr_halve_every=20, log_every=10, seed=s, **kw)
            for s in SEEDS]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "looped"])
@pytest.mark.parametrize("kind,params", [("unet", {"width": 4, "blocks": 1}), ("bfcnn", {"width": 4, "layers": 4})])
def test_packed_and_solo_weights_agree_after_50_steps(fused, kind, params):
    images, cfgs = image_sets(), configs()
    solo = [train_denoiser(net, x, c, device="cpu") for net, x, c in zip(nets(kind, **params), images, cfgs)]
    packed = train_pack(ModelPack(nets(kind, **params), fused=fused), images, cfgs, device="cpu")
    for k, (alone, together) in enumerate(zip(solo, packed)):
        assert alone.steps_done == together.steps_done == 50
        a, b = alone.net.state_dict(), together.net.state_dict()
        assert a.keys() == b.keys()
        for name in a:  # weights, gains and each model's own running std
            assert torch.allclose(a[name], b[name], rtol=0, atol=1e-5), (k, name, (a[name] - b[name]).abs().max())
        for (s1, l1), (s2, l2) in zip(alone.losses, together.losses):
            assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-5)
    # the models really are different: a pack that mixed them up would not pass the checks above
    assert not torch.allclose(packed[0].net.state_dict()["encoder.0.0.weight" if kind == "unet" else "net.0.weight"],
                              packed[1].net.state_dict()["encoder.0.0.weight" if kind == "unet" else "net.0.weight"])


@pytest.mark.parametrize("average_last", [0.0, 0.5], ids=["last-weights", "averaged"])
def test_a_looped_pack_is_bit_identical_to_solo_training(average_last):
    images, cfgs = image_sets(), configs(steps=12, average_last=average_last)
    solo = [train_denoiser(net, x, c, device="cpu") for net, x, c in zip(nets(), images, cfgs)]
    packed = train_pack(ModelPack(nets(), fused=False), images, cfgs, device="cpu")
    for alone, together in zip(solo, packed):
        for name, value in alone.net.state_dict().items():
            assert torch.equal(value, together.net.state_dict()[name]), name
        assert alone.losses == together.losses


def test_a_pack_of_float_and_uint8_image_sets_trains_each_on_images_in_0_1():
    """Datasets of one pack may differ in storage: discs are float, photographs uint8. Each model
    trains as it would alone, the uint8 images scaled to [0, 1] (stacked with a float set first,
    they would be promoted to float unscaled, and that model would train on images 255 times too bright)."""
    images = image_sets()
    mixed = [images[0].float() / 255.0, images[1], images[2]]
    cfgs = configs(steps=12)
    solo = [train_denoiser(net, x, c, device="cpu") for net, x, c in zip(nets(), images, cfgs)]
    packed = train_pack(ModelPack(nets(), fused=False), mixed, cfgs, device="cpu")
    for alone, together in zip(solo, packed):
        for name, value in alone.net.state_dict().items():
            assert torch.equal(value, together.net.state_dict()[name]), name
        assert alone.losses == together.losses


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "looped"])
def test_each_network_of_a_pack_keeps_its_own_batch_norm_statistics(fused):
    models = nets()
    pack = ModelPack(models, fused=fused).train()
    x = torch.rand(3, 4, 1, 8, 8) * torch.tensor([0.1, 1.0, 10.0]).view(3, 1, 1, 1, 1)  # very different scales
    out = pack(x)
    for k, net in enumerate(models):
        alone = net.train()(x[k])
        assert torch.allclose(out[k], alone, atol=1e-6)
        for name, buffer in net.named_buffers():
            assert torch.allclose(pack.state_dict_of(k)[name], buffer), (k, name)
    first_sd = next(name for name, _ in models[0].named_buffers())
    running = [pack.state_dict_of(k)[first_sd] for k in range(3)]
    assert not torch.allclose(running[0], running[2])  # each from its own batch's scale


def test_a_packed_network_stays_bias_free():
    pack = ModelPack(nets(), fused=True).eval()
    x = torch.rand(3, 2, 1, 8, 8)
    assert torch.allclose(pack(3.0 * x), 3.0 * pack(x), atol=1e-5)


def test_an_interrupted_pack_resumes_to_the_same_weights(tmp_path):
    images, cfgs = image_sets(), configs(steps=12, checkpoint_every=5)
    straight = train_pack(ModelPack(nets()), images, cfgs, device="cpu")
    checkpoint = tmp_path / "pack.pt"
    train_until_first_checkpoint(train_pack, ModelPack(nets()), images, cfgs, device="cpu", checkpoint_path=checkpoint)
    fresh = [build_model("unet", seed=99, width=4, blocks=1) for _ in SEEDS]  # weights come from the checkpoint
    resumed = train_pack(ModelPack(fresh), images, cfgs, device="cpu", checkpoint_path=checkpoint)
    for a, b in zip(straight, resumed):
        assert b.resumed_from == 5
        for name, value in a.net.state_dict().items():
            assert torch.equal(value, b.net.state_dict()[name]), name
        assert a.losses == b.losses


def test_snapshots_of_a_pack_are_each_models_weights_at_that_step():
    images = image_sets()
    snapshots = {}
    train_pack(ModelPack(nets()), images, configs(steps=12, snapshot_steps=(8,)), device="cpu",
               on_snapshot=lambda step, k, net: snapshots.setdefault((step, k), net.state_dict()))
    stopped = train_pack(ModelPack(nets()), images, configs(steps=8), device="cpu")
    # lr_halve_every=20 > 12: the schedule up to step 8 is the same in both runs
    for k, result in enumerate(stopped):
        for name, value in result.net.state_dict().items():
            assert torch.equal(snapshots[(8, k)][name], value), (k, name)


def test_a_pack_refuses_models_with_different_settings_or_architectures():
    mixed = configs()
    mixed[1] = TrainConfig(steps=50, batch_size=6, lr=1e-3, lr_halve_every=20, log_every=10, seed=11)
    with pytest.raises(ValueError, match="but the seed"):
        train_pack(ModelPack(nets()), image_sets(), mixed, device="cpu")
    with pytest.raises(ValueError, match="one architecture"):
        ModelPack([build_model("unet", width=4, blocks=1), build_model("unet", width=8, blocks=1)])


def test_channels_last_weights_compute_the_same_networks():
    """`train_pack` lays a CPU pack's weights out channels-last: each model's slice must be a
    channels-last weight, and every network must compute what it computed before."""
    pack = ModelPack(nets(), fused=False).train()
    x = torch.rand(3, 4, 1, 8, 8)
    before, weights = pack(x), [pack.state_dict_of(k) for k in range(3)]
    params = list(pack.parameters())
    pack.channels_last_()
    assert all(now is then for now, then in zip(pack.parameters(), params, strict=True))  # as an optimizer holds them
    conv = pack.state_dict_of(1)["encoder.0.2.weight"]  # 4 -> 4 channels
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for k in range(3):
        for name, value in pack.state_dict_of(k).items():
            assert torch.equal(value, weights[k][name]), (k, name)
    assert torch.allclose(pack(x), before, atol=1e-6)
