"""PSNR curves, split-pair similarity, nearest neighbours, memorization fraction and the PSNR slope."""

from __future__ import annotations

import math

import pytest
import torch

from gahb_scale.analysis import (cosine_similarity, fit_psnr_slope, match_training_set, memorization_fraction,
                                 memorized_share, nearest_neighbours, optimal_calpha_slope, psnr, psnr_curve,
                                 split_pair_similarity)


def _sigmas(count: int) -> torch.Tensor:
    """`count` noise levels log-spaced from 1/255 to 1."""
    return torch.logspace(0.0, math.log10(255.0), count) / 255.0


def _images(count: int, seed: int, size: int = 8) -> torch.Tensor:
    return torch.rand(count, 1, size, size, generator=torch.Generator().manual_seed(seed))


# --- PSNR -----------------------------------------------------------------------------------------

def test_psnr_of_known_error():
    x = _images(3, seed=0)
    torch.testing.assert_close(psnr(x + 0.1, x), torch.full((3,), 20.0), rtol=0, atol=1e-4)


def test_identity_denoiser_output_psnr_equals_input_psnr():
    # psnr_out - psnr_in = -10 log10(mean z^2) over 64 pixels: spread ~0.77 dB per image, ~0.1 dB
    # for the mean of 64 images, so 0.5 dB is five standard errors
    curve = psnr_curve(lambda y: y, _images(64, seed=1), _sigmas(5))
    torch.testing.assert_close(curve["psnr_in"], -20 * torch.log10(curve["sigma"]))
    assert (curve["psnr_out"] - curve["psnr_in"]).abs().max() < 0.5
    assert ((curve["psnr_out_std"] > 0.4) & (curve["psnr_out_std"] < 1.2)).all()


def test_oracle_denoiser_gives_infinite_psnr():
    # an exact estimate has no finite PSNR: +inf is reported rather than an invented large number
    images = _images(4, seed=2)
    curve = psnr_curve(lambda y: images, images, _sigmas(3))
    assert torch.isposinf(curve["psnr_out"]).all()


def test_psnr_curve_is_reproducible_by_seed_and_independent_of_batch_size():
    images, sigmas = _images(10, seed=3), _sigmas(4)
    def shrink(y):
        return 0.5 * y + 0.25
    first = psnr_curve(shrink, images, sigmas, seed=7)
    torch.testing.assert_close(psnr_curve(shrink, images, sigmas, seed=7, batch_size=3), first)
    assert not torch.equal(psnr_curve(shrink, images, sigmas, seed=8)["psnr_out"], first["psnr_out"])


def test_psnr_curve_gives_two_denoisers_the_same_noise():
    seen: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
    def recorder(name):
        def denoiser(y):
            seen[name].append(y.clone())
            return y
        return denoiser
    images, sigmas = _images(5, seed=4), _sigmas(3)
    psnr_curve(recorder("a"), images, sigmas, seed=11)
    psnr_curve(recorder("b"), images, sigmas, seed=11)
    assert all(torch.equal(a, b) for a, b in zip(seen["a"], seen["b"], strict=True))


# --- split-pair similarity ------------------------------------------------------------------------

def test_identical_images_have_cosine_one_and_zero_distance():
    x = _images(3, seed=5)
    similarity = split_pair_similarity(x, x.clone())
    torch.testing.assert_close(similarity["cosine"], torch.ones(3))
    torch.testing.assert_close(similarity["cosine_centered"], torch.ones(3))
    torch.testing.assert_close(similarity["l2_normalized"], torch.zeros(3))


def test_raw_cosine_cannot_tell_flat_images_of_different_grey():
    # the degeneracy: two flat images are parallel vectors whatever their grey; only L2 sees it, and
    # the centered cosine is undefined (NaN) because a flat image has no structure left
    dark, light = torch.full((1, 1, 8, 8), 0.2), torch.full((1, 1, 8, 8), 0.7)
    similarity = split_pair_similarity(dark, light)
    torch.testing.assert_close(similarity["cosine"], torch.ones(1))
    torch.testing.assert_close(similarity["l2_normalized"], torch.tensor([0.5]))
    assert torch.isnan(similarity["cosine_centered"]).all()


def test_centered_cosine_of_contrast_reversed_image_is_minus_one():
    x = _images(3, seed=6)
    torch.testing.assert_close(cosine_similarity(x, 1.0 - x, centered=True), -torch.ones(3))
    assert (cosine_similarity(x, 1.0 - x) > 0).all()  # raw cosine of non-negative images never sees it


# --- nearest neighbours and memorization ----------------------------------------------------------

def test_nearest_neighbours_find_exact_copies_of_training_images():
    train = _images(50, seed=7)
    picked = torch.tensor([3, 17, 42])
    found = nearest_neighbours(train[picked], train, chunk_size=16)
    assert torch.equal(found.index_l2, picked)
    assert torch.equal(found.d1, torch.zeros(3))
    assert torch.equal(found.ratio, torch.zeros(3))
    assert (found.d2 > 0).all()
    torch.testing.assert_close(found.cosine, torch.ones(3))


def test_nearest_neighbours_agree_with_brute_force_across_chunks():
    samples, train = _images(5, seed=8), _images(37, seed=9)
    found = nearest_neighbours(samples, train, chunk_size=4)

    distances = torch.cdist(samples.flatten(1).double(), train.flatten(1).double())
    sorted_distances, order = distances.sort(dim=1)
    unit = lambda x: torch.nn.functional.normalize(x.flatten(1).double(), dim=1)  # noqa: E731
    best_cosine = (unit(samples) @ unit(train).T).max(dim=1).values

    assert torch.equal(found.index_l2, order[:, 0])
    torch.testing.assert_close(found.d1.double(), sorted_distances[:, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(found.d2.double(), sorted_distances[:, 1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(found.ratio.double(), sorted_distances[:, 0] / sorted_distances[:, 1], rtol=1e-5,
                               atol=1e-6)
    torch.testing.assert_close(found.cosine.double(), best_cosine, rtol=1e-5, atol=1e-6)


def test_black_training_image_does_not_hide_the_most_similar_one():
    train = torch.cat([torch.zeros(1, 1, 8, 8), _images(6, seed=10)])
    found = nearest_neighbours(train[[4]], train, chunk_size=3)  # the black image shares the first chunk
    torch.testing.assert_close(found.cosine, torch.ones(1))


def test_training_set_matches_count_rescaled_copies_and_leave_diverged_samples_out():
    """Two exact copies, one copy at twice the gain and a diverged (NaN) sample: by raw pixels the
    rescaled copy is new, scale-free it is memorized; the NaN sample counts for neither, by default
    as with an explicit mask."""
    train = _images(5, seed=13)
    samples = torch.cat([train[[0, 1]], 2 * train[[2]], torch.full((1, 1, 8, 8), float("nan"))])
    matches = match_training_set(samples, train, n_boot=50)
    assert matches.f_mem.value == pytest.approx(2 / 3) and matches.f_mem_scale_free.value == 1.0
    assert matches.scale_free.index_l2[:3].tolist() == [0, 1, 2]
    masked = match_training_set(samples, train, usable=torch.tensor([True, True, True, False]), n_boot=50)
    assert (masked.f_mem.value, masked.f_mem_scale_free.value) == (2 / 3, 1.0)


def test_single_training_image_leaves_ratio_and_fraction_undefined():
    train = _images(1, seed=11)
    found = nearest_neighbours(_images(4, seed=12), train)
    assert torch.equal(found.index_l2, torch.zeros(4, dtype=torch.long))
    assert (found.d1 > 0).all()
    assert torch.isnan(found.d2).all() and torch.isnan(found.ratio).all()
    fraction = memorization_fraction(found.ratio)
    assert not fraction.defined
    assert all(math.isnan(v) for v in (fraction.value, fraction.low, fraction.high))


def test_memorization_fraction_of_known_ratios():
    ratio = torch.cat([torch.full((30,), 0.1), torch.full((70,), 0.5)])
    fraction = memorization_fraction(ratio[torch.randperm(100, generator=torch.Generator().manual_seed(0))])
    assert fraction.defined
    assert fraction.value == pytest.approx(0.3)
    # binomial standard error sqrt(0.3 * 0.7 / 100) ~ 0.046: a 95% interval about +-0.09 wide
    assert fraction.low < 0.3 < fraction.high
    assert 0.12 < fraction.high - fraction.low < 0.25
    assert memorization_fraction(ratio, seed=0) == memorization_fraction(ratio, seed=0)


def test_a_fraction_pooled_over_models_resamples_the_models():
    """Samples of one model are not independent: two models that disagree completely (one copies
    in every sample, the other never) say little about the pooled share, whatever their number of
    samples, while models that agree say as much as their samples do."""
    copies, new = torch.full((64,), 0.1), torch.full((64,), 0.9)
    models = ["A"] * 64 + ["B"] * 64
    disagree = memorization_fraction(torch.cat([copies, new]), models=models)
    assert disagree.value == 0.5 and (disagree.low, disagree.high) == (0.0, 1.0)
    assert memorization_fraction(torch.cat([copies, new])).high - 0.5 < 0.1  # the samples alone: far too sure
    half = torch.cat([torch.full((32,), 0.1), torch.full((32,), 0.9)])
    agree = memorization_fraction(torch.cat([half, half]), models=models)
    alone = memorization_fraction(torch.cat([half, half]))
    assert agree.low < 0.5 < agree.high
    assert agree.high - agree.low == pytest.approx(alone.high - alone.low, abs=0.04)
    # one model: the samples' own bootstrap, Bonnaire et al.'s
    assert memorization_fraction(half, models=["A"] * 64) == memorization_fraction(half)
    pooled = torch.cat([half, copies])
    assert memorization_fraction(pooled, models=models, seed=3) == memorization_fraction(pooled, models=models, seed=3)


def test_memorization_fraction_threshold_is_strict():
    ratio = torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    assert memorization_fraction(ratio, threshold=0.5).value == pytest.approx(0.25)


def test_memorized_share_is_the_fractions_value_and_undefined_with_a_nan_ratio():
    ratio = torch.tensor([0.1, 0.2, 0.5, 0.9], dtype=torch.float64)
    assert memorized_share(ratio) == memorization_fraction(ratio).value == 0.5
    assert math.isnan(memorized_share(torch.tensor([0.1, float("nan")])))
    assert math.isnan(memorized_share(torch.tensor([])))


# --- C^alpha PSNR slope ---------------------------------------------------------------------------

def test_fit_psnr_slope_recovers_known_line_from_noisy_points():
    generator = torch.Generator().manual_seed(13)
    psnr_in = torch.linspace(0.0, 48.0, 25, dtype=torch.float64)
    psnr_out = 0.75 * psnr_in + 3.0 + 0.05 * torch.randn(25, dtype=torch.float64, generator=generator)
    slope, intercept = fit_psnr_slope(psnr_in, psnr_out)
    assert slope == pytest.approx(0.75, abs=0.01)
    assert intercept == pytest.approx(3.0, abs=0.2)


def test_fit_psnr_slope_restricted_to_range_ignores_saturated_end():
    psnr_in = torch.linspace(0.0, 48.0, 25, dtype=torch.float64)
    # linear up to 30 dB input PSNR, flat beyond
    psnr_out = torch.minimum(0.5 * psnr_in + 10.0, torch.tensor(25.0, dtype=torch.float64))
    assert fit_psnr_slope(psnr_in, psnr_out)[0] < 0.45
    slope, intercept = fit_psnr_slope(psnr_in, psnr_out, psnr_in_range=(0.0, 30.0))
    assert slope == pytest.approx(0.5) and intercept == pytest.approx(10.0)


def test_fit_psnr_slope_refuses_too_few_or_non_finite_points():
    with pytest.raises(ValueError):
        fit_psnr_slope([10.0, 20.0, 30.0], [5.0, 10.0, 15.0], psnr_in_range=(15.0, 25.0))
    with pytest.raises(ValueError):
        fit_psnr_slope([10.0, 20.0], [5.0, float("inf")])


def test_optimal_calpha_slope():
    assert optimal_calpha_slope(1.0) == pytest.approx(0.5)
    assert optimal_calpha_slope(3.0) == pytest.approx(0.75)
    assert optimal_calpha_slope(4.0) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        optimal_calpha_slope(0.0)
