"""The blind training run: noise draw, tiling, schedule, checkpoint/resume."""

import math

import pytest
import torch
from interrupt import train_until_first_checkpoint

from gahb_scale.errors import UserInputError
from gahb_scale.models import build_model
from gahb_scale.training import TiledBatches, TrainConfig, draw_noise_levels, train_denoiser


def tiny_images(n=12, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_quadratic_noise_levels_follow_their_distribution():
    a, b = 4.0, 100.0
    sigma = draw_noise_levels(200_000, (a, b), "quadratic", torch.Generator().manual_seed(0), torch.device("cpu"))
    grey = sigma.flatten() * 255
    assert grey.min() >= a - 1e-4 and grey.max() <= b + 1e-4
    for s in (10.0, 30.0, 70.0):  # P(σ ≤ s) = (√s − √a)/(√b − √a) for the quadratic range
        expected = (math.sqrt(s) - math.sqrt(a)) / (math.sqrt(b) - math.sqrt(a))
        assert abs((grey <= s).float().mean().item() - expected) < 0.005


def test_linear_noise_levels_are_uniform():
    sigma = draw_noise_levels(200_000, (0, 255), "linear", torch.Generator().manual_seed(0), torch.device("cpu"))
    assert abs((sigma <= 0.25).float().mean().item() - 0.25) < 0.005


def test_tiling_shows_every_image_once_per_pass():
    batches = TiledBatches(7, seed=0)
    shown = torch.cat([batches.next(5) for _ in range(14)])  # 70 indices = 10 passes
    for p in range(10):
        assert sorted(shown[7 * p:7 * p + 7].tolist()) == list(range(7))
    assert torch.equal(TiledBatches(1, seed=3).next(4), torch.zeros(4, dtype=torch.long))


def test_step_count_does_not_depend_on_n():
    config = TrainConfig(steps=6, batch_size=4, log_every=3)
    for n in (1, 12):
        result = train_denoiser(build_model("bfcnn", seed=0, width=4, layers=3), tiny_images(n), config, device="cpu")
        assert result.steps_done == 6 and [s for s, _ in result.losses] == [3, 6]


def test_training_reduces_the_denoising_loss():
    images = tiny_images(4)
    config = TrainConfig(steps=150, batch_size=16, lr=3e-3, log_every=25, lr_halve_every=100)
    result = train_denoiser(build_model("unet", seed=0, width=8, blocks=1), images, config, device="cpu")
    first, last = result.losses[0][1], result.losses[-1][1]
    assert last < 0.5 * first


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, device):
    """Bit for bit on the CPU; on CUDA (kernels not bitwise deterministic) the checkpoint's CPU
    batch-order state must load next to the device's noise state."""
    images = tiny_images()
    config = TrainConfig(steps=12, batch_size=5, checkpoint_every=5, log_every=4, lr_halve_every=6)
    straight = train_denoiser(build_model("unet", seed=1, width=4, blocks=1), images, config, device=device)
    checkpoint = tmp_path / "ckpt.pt"
    train_until_first_checkpoint(train_denoiser, build_model("unet", seed=1, width=4, blocks=1), images, config,
                                 device=device, checkpoint_path=checkpoint)
    resumed = train_denoiser(build_model("unet", seed=2, width=4, blocks=1), images, config, device=device,
                             checkpoint_path=checkpoint)
    assert resumed.resumed_from == 5 and resumed.steps_done == 12
    for (name, p), q in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(p, q) if device == "cpu" else torch.allclose(p, q, atol=1e-4), name
    if device == "cpu":
        assert resumed.losses == straight.losses


def test_snapshots_hold_the_weights_of_a_run_stopped_there(tmp_path):
    """A snapshot at step s equals the final weights of a run of s steps (same schedule), and a
    run resumed from a checkpoint still delivers every snapshot after it."""
    images = tiny_images()
    config = TrainConfig(steps=12, batch_size=5, checkpoint_every=5, log_every=4, lr_halve_every=6,
                         snapshot_steps=(3, 8))
    snapshots = {}

    def keep(step, net):
        snapshots[step] = {k: v.clone() for k, v in net.state_dict().items()}

    train_denoiser(build_model("unet", seed=1, width=4, blocks=1), images, config, device="cpu", on_snapshot=keep)
    assert sorted(snapshots) == [3, 8]
    short = TrainConfig(steps=8, batch_size=5, checkpoint_every=5, log_every=4, lr_halve_every=6)
    stopped = train_denoiser(build_model("unet", seed=1, width=4, blocks=1), images, short, device="cpu")
    for name, value in stopped.net.state_dict().items():
        assert torch.equal(snapshots[8][name], value), name
    checkpoint, resumed = tmp_path / "ckpt.pt", {}
    train_until_first_checkpoint(train_denoiser, build_model("unet", seed=1, width=4, blocks=1), images, config,
                                 device="cpu", checkpoint_path=checkpoint, on_snapshot=lambda s, n: None)
    train_denoiser(build_model("unet", seed=1, width=4, blocks=1), images, config, device="cpu",
                   checkpoint_path=checkpoint, on_snapshot=lambda s, n: resumed.update({s: {k: v.clone() for k, v in n.state_dict().items()}}))
    assert sorted(resumed) == [8]
    for name, value in resumed[8].items():
        assert torch.equal(snapshots[8][name], value), name


def test_polyak_averaging_ends_with_the_mean_of_the_last_steps_weights_and_resumes_exactly(tmp_path):
    """average_last = 0.5 of 12 steps: the final weights (and BF batch-norm buffers) are the mean of
    the weights after steps 7 ... 12, which snapshots of the same run hold; a run resumed from its
    step-5 checkpoint (before averaging began) and one from step 10 (in the middle of it) end alike."""
    images = tiny_images()
    settings = dict(steps=12, batch_size=5, log_every=4, lr_halve_every=6, average_last=0.5)
    snapshots = {}
    averaged = train_denoiser(build_model("unet", seed=1, width=4, blocks=1), images,
                              TrainConfig(**settings, checkpoint_every=5, snapshot_steps=range(7, 13)), device="cpu",
                              on_snapshot=lambda s, n: snapshots.update({s: n.state_dict()}))
    assert sorted(snapshots) == list(range(7, 13))
    for name, value in averaged.net.state_dict().items():
        if value.is_floating_point():
            mean = torch.stack([snapshots[s][name] for s in snapshots]).mean(0)
            assert torch.allclose(value, mean, atol=1e-6), name
            assert not torch.allclose(value, snapshots[12][name]) or name.endswith("num_batches_tracked"), name
    for every in (5, 10):
        checkpoint = tmp_path / f"every{every}.pt"
        config = TrainConfig(**settings, checkpoint_every=every)
        train_until_first_checkpoint(train_denoiser, build_model("unet", seed=1, width=4, blocks=1), images, config,
                                     device="cpu", checkpoint_path=checkpoint)
        resumed = train_denoiser(build_model("unet", seed=2, width=4, blocks=1), images, config, device="cpu",
                                 checkpoint_path=checkpoint)
        assert resumed.resumed_from == every
        for (name, p), q in zip(averaged.net.state_dict().items(), resumed.net.state_dict().values()):
            assert torch.allclose(p, q, atol=1e-6), (every, name)


def test_averaging_off_leaves_checkpoint_records_and_trial_ids_as_before_it_existed():
    """A setting added later is recorded only when on, so models and checkpoints made before it
    keep their identity."""
    assert "average_last" not in TrainConfig(steps=3).recorded()
    assert TrainConfig(steps=3, average_last=0.25).recorded()["average_last"] == 0.25


def test_snapshot_steps_outside_training_are_refused():
    with pytest.raises(ValueError, match="snapshot_steps"):
        TrainConfig(steps=10, snapshot_steps=(5, 11))


def test_checkpoint_of_another_config_is_refused(tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    train_denoiser(build_model("bfcnn", width=4, layers=3), tiny_images(), TrainConfig(steps=2, batch_size=2),
                   device="cpu", checkpoint_path=checkpoint)
    with pytest.raises(UserInputError, match="another training config"):
        train_denoiser(build_model("bfcnn", width=4, layers=3), tiny_images(), TrainConfig(steps=3, batch_size=2),
                       device="cpu", checkpoint_path=checkpoint)


def test_seeded_models_are_reproducible_and_seed_dependent():
    a, b, c = (build_model("unet", seed=s, width=4, blocks=1) for s in (0, 0, 1))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="noise_range"):
        TrainConfig(noise_range=(10, 5))
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")


def test_uint8_images_train_exactly_as_their_float_conversion():
    """A folder's images stay uint8 on the device (a quarter of the memory) and are converted batch by
    batch: the run is the run on the float images."""
    from gahb_scale.data import to_float_images

    images = torch.randint(0, 256, (6, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    config = TrainConfig(steps=5, batch_size=4, log_every=5, seed=3)
    runs = [train_denoiser(build_model("unet", seed=1, width=4, blocks=1), x, config, device="cpu")
            for x in (images, to_float_images(images))]
    for a, b in zip(*(r.net.state_dict().values() for r in runs)):
        assert torch.equal(a, b)
    assert runs[0].losses == runs[1].losses


def test_training_settings_are_checked_once_for_a_run_and_a_study():
    """A run's TrainConfig and a study's `training` section share one model of the settings: the
    same defaults and the same bounds, each error naming the field."""
    from gahb_scale.design.spec import TrainingSpec

    assert TrainingSpec().config(seed=0, n=1) == TrainConfig()
    for bad in ({"lr": 0}, {"noise_range": (5, 5)}, {"batch_size": 0}, {"steps": 4, "snapshot_steps": (5,)}):
        with pytest.raises(ValueError) as run_error:
            TrainConfig(**bad)
        with pytest.raises(ValueError) as study_error:
            TrainingSpec(**bad)
        name = next(iter(bad)) if "snapshot_steps" not in bad else "snapshot_steps"
        assert name in str(run_error.value) and name in str(study_error.value)
