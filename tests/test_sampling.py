"""The sampler against priors whose answer is known in closed form."""

import math

import pytest
import torch

from gahb_scale.analysis.reference import EmpiricalOptimalDenoiser, GaussianDenoiser
from gahb_scale.models import build_model
from gahb_scale.sampling import sample_kadkhodaie_simoncelli, step_size


def gaussian_prior(n=64, seed=0):
    """N(0.5, C) with eigenvalues log-spaced in [0.002, 0.05] and a random eigenbasis.

    The mean is the sampler's starting grey: the deterministic sampler maps its initial noise
    through the flow, so an offset between the two would survive (shrunk) into the samples.
    """
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eigenvalues = torch.logspace(math.log10(0.002), math.log10(0.05), n, dtype=torch.float64)
    return torch.full((n,), 0.5, dtype=torch.float64), basis @ torch.diag(eigenvalues) @ basis.T


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_sampler_reproduces_gaussian_prior(beta):
    mean, cov = gaussian_prior()
    result = sample_kadkhodaie_simoncelli(GaussianDenoiser(mean, cov), (1, 8, 8), seeds=range(2000), beta=beta,
                                          device="cpu")
    assert result.num_capped == 0
    x = result.samples.double().flatten(1)
    # Tolerances: the mean of 2000 samples has std <= sqrt(0.05/2000) = 0.005 per pixel; the
    # variance estimate has relative std sqrt(2/2000) = 3%. The sampler starts from N(0.5, I)
    # rather than N(0.5, C + I), which lowers variances by about the eigenvalue (<= 5%).
    assert (x.mean(0) - mean).abs().max() < 0.02
    ratio = x.var(0) / cov.diag()
    assert ratio.min() > 0.8 and ratio.max() < 1.2
    assert 0.9 < ratio.mean() < 1.05


def test_sampler_with_memorizing_denoiser_returns_training_images():
    from gahb_scale.analysis.memorization import memorization_fraction, nearest_neighbours

    g = torch.Generator().manual_seed(1)
    train = torch.rand(5, 1, 8, 8, generator=g)
    result = sample_kadkhodaie_simoncelli(EmpiricalOptimalDenoiser(train), (1, 8, 8), seeds=range(40), beta=0.5,
                                          device="cpu")
    assert result.num_capped == 0
    nn = nearest_neighbours(result.samples, train)
    assert nn.cosine.min() > 0.99
    assert memorization_fraction(nn.ratio).value == 1.0
    assert len(set(nn.index_l2.tolist())) > 1  # different seeds land on different training images


def _tiny_net(seed):
    net = build_model("unet", seed=seed, width=4, blocks=1)
    with torch.no_grad():  # settle the BF batch-norm running std so the eval-mode net is not ~0
        for _ in range(30):
            net(torch.rand(8, 1, 8, 8))
    return net.eval()


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_same_seed_same_model_gives_identical_samples(beta):
    net = _tiny_net(0)
    kwargs = dict(image_shape=(1, 8, 8), seeds=[3, 7, 11], beta=beta, h0=0.2, sigma_L=0.2, max_steps=50,
                  device="cpu")
    first, second = sample_kadkhodaie_simoncelli(net, **kwargs), sample_kadkhodaie_simoncelli(net, **kwargs)
    assert torch.equal(first.samples, second.samples)
    assert torch.equal(first.steps, second.steps)


def test_two_models_receive_identical_noise_streams():
    """Record every noisy input each model sees; strip the model's own contribution to recover the noise."""

    class Recording(torch.nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale, self.inputs = scale, []

        def forward(self, y):  # a linear residual: the update y - h·d is then known exactly
            self.inputs.append(y.clone())
            return self.scale * (y - 0.5)

    seeds, h0, beta = [5, 6, 7, 8], 0.1, 0.4
    streams = []
    for scale in (0.9, 0.6):
        model = Recording(scale)
        sample_kadkhodaie_simoncelli(model, (1, 4, 4), seeds, h0=h0, beta=beta, sigma_L=1e-9, max_steps=6,
                                     device="cpu")
        noises = [model.inputs[0] - 0.5]
        for t in range(1, len(model.inputs)):
            d = scale * (model.inputs[t - 1] - 0.5)
            h = step_size(t, h0)
            sigma = d.flatten(1).norm(dim=1) / 4
            gamma = sigma * math.sqrt((1 - beta * h) ** 2 - (1 - h) ** 2)
            injected = model.inputs[t] - (model.inputs[t - 1] - h * d)
            noises.append(injected / gamma.view(-1, 1, 1, 1))
        streams.append(torch.stack(noises))
    assert torch.allclose(streams[0], streams[1], atol=1e-4)
    # and the stream is what the seed alone dictates: sample i's first draw is randn from seed i
    for i, seed in enumerate(seeds):
        assert torch.allclose(streams[0][0, i], torch.randn((1, 4, 4), generator=torch.Generator().manual_seed(seed)))
    # different seeds, different streams: 96 draws per seed, so |correlation| of independent ones < 0.4
    per_seed = streams[0].transpose(0, 1).flatten(1)
    correlation = torch.corrcoef(per_seed)
    assert (correlation - torch.eye(len(seeds))).abs().max() < 0.4


def test_a_sample_is_the_same_alone_or_in_any_batch():
    """Sample i's noise depends on its seed and step alone: not on the other samples in its batch,
    their order, or which of them stopped earlier (the samples stop individually here)."""
    mean, cov = gaussian_prior(n=16)
    denoiser = GaussianDenoiser(mean, cov)
    seeds = [4, 9, 2, 30, 17]
    run = dict(image_shape=(1, 4, 4), beta=0.3, device="cpu")
    batched = sample_kadkhodaie_simoncelli(denoiser, seeds=seeds, **run)
    reordered = sample_kadkhodaie_simoncelli(denoiser, seeds=seeds[::-1], **run)
    assert batched.steps.min() < batched.steps.max()  # the others leave the batch at different steps
    for i, seed in enumerate(seeds):
        alone = sample_kadkhodaie_simoncelli(denoiser, seeds=[seed], **run)
        for other, row in ((batched, i), (reordered, len(seeds) - 1 - i)):
            assert other.steps[row] == alone.steps[0]
            assert torch.allclose(other.samples[row], alone.samples[0], atol=1e-5)


def test_step_cap_is_reported():
    identity_residual = lambda y: y - 0.5  # noqa: E731  σ_t never falls below sigma_L within 3 steps
    result = sample_kadkhodaie_simoncelli(identity_residual, (1, 4, 4), seeds=[0, 1], h0=0.01, max_steps=3,
                                          device="cpu")
    assert result.hit_cap.all() and result.num_capped == 2 and not result.diverged.any()
    assert (result.steps == 3).all()
    assert result.sigmas.shape == (2, 3) and not result.sigmas.isnan().any()


def test_samples_stop_individually():
    mean, cov = gaussian_prior(n=16)
    result = sample_kadkhodaie_simoncelli(GaussianDenoiser(mean, cov), (1, 4, 4), seeds=range(16), beta=0.3,
                                          device="cpu")
    assert result.steps.min() < result.steps.max()  # with injected noise, trajectories differ in length
    for i in range(16):
        row = result.sigmas[i]
        k = int(result.steps[i])
        assert not row[:k].isnan().any() and row[k:].isnan().all()
        assert row[k - 1] <= 0.01


def test_diverging_trajectory_is_stopped_and_reported():
    exploding_residual = lambda y: -1e30 * y  # noqa: E731  ascent away from everything: y overflows
    result = sample_kadkhodaie_simoncelli(exploding_residual, (1, 4, 4), seeds=[0], h0=0.5, max_steps=100,
                                          device="cpu")
    assert result.diverged.all() and result.num_diverged == 1
    assert not result.hit_cap.any() and result.steps[0] < 100


def test_a_trajectory_past_twice_sigma_0_is_not_converging():
    """The authors' test (σ_t > 2 for σ_0 = 1): the ascent is stopped while still finite, and the
    sample is NaN, so nothing downstream mistakes it for an image."""
    receding = lambda y: -(y - 0.5)  # noqa: E731  d points away from the mean grey: σ_t grows from ~1
    result = sample_kadkhodaie_simoncelli(receding, (1, 8, 8), seeds=[0, 1], h0=0.1, max_steps=1000, device="cpu")
    assert result.diverged.all() and not result.hit_cap.any()
    assert torch.isnan(result.samples).all()
    last = result.sigmas[0, int(result.steps[0]) - 1]
    assert 2.0 < last < 3.0 and result.steps.max() < 100
