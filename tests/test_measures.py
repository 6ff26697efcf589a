"""Known answers for the memorization measures of docs/measures.md, and for the table that
gathers every measure into one row per (dataset, architecture, N): `transition_rows`.

Bonnaire et al.'s f_mem is checked against their own formula (`Evaluation/compute_fmem.py`: raw
pixel L2 to the two nearest training images, d1/d2 < 1/3, a 1000-resample percentile bootstrap),
written out here as they wrote it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gahb_scale.analysis import (EmpiricalOptimalDenoiser, distance_to_memorizer, independent_pair_similarity,
                                 memorization_fraction, nearest_neighbours, shrunk_gaussian_fit, training_noise_prior,
                                 unit_vectors)
from gahb_scale.design.measures import chance_columns, median_over_sigma, psnr_columns
from gahb_scale.design.spec_file import parse_spec
from gahb_scale.study.summarise import transition_rows
from gahb_scale.training import draw_noise_levels


def images(count: int, seed: int, size: int = 8) -> torch.Tensor:
    return torch.rand(count, 1, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def bonnaire_fmem(samples: torch.Tensor, train: torch.Tensor, threshold: float = 1 / 3, n_bootstrap: int = 1000,
                  seed: int = 0) -> tuple[float, float, float]:
    """Their compute_fraction_mem + bootstrap_mean_se, on one batch: (fraction, lower, upper)."""
    n_pixels = samples[0].numel()
    dist = torch.norm(samples.reshape(-1, 1, n_pixels) - train.reshape(-1, n_pixels), dim=2, p=2)
    knn = dist.topk(2, dim=1, largest=False)[0]
    gap_ratio = (knn[:, 0] / knn[:, 1]).numpy()
    rng = np.random.default_rng(seed)
    means = np.array([np.mean(rng.choice(gap_ratio, size=len(gap_ratio), replace=True) < threshold)
                      for _ in range(n_bootstrap)])
    lower, upper = np.percentile(means, [2.5, 97.5])
    return float(np.mean(gap_ratio < threshold)), float(lower), float(upper)


def test_f_mem_is_bonnaires_raw_pixel_measure():
    train = images(20, seed=1)
    noise = 0.02 * torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    # 12 near-copies of training images (memorized) and 28 fresh images (not)
    samples = torch.cat([train[:12] + noise[:12], images(28, seed=3)])
    found = nearest_neighbours(samples, train)
    ours = memorization_fraction(found.ratio)
    theirs = bonnaire_fmem(samples, train)
    assert ours.value == pytest.approx(theirs[0]) == pytest.approx(12 / 40)
    # the same percentile bootstrap, other random draws: intervals agree to the bootstrap's own noise
    assert ours.low == pytest.approx(theirs[1], abs=0.05) and ours.high == pytest.approx(theirs[2], abs=0.05)
    assert torch.equal(found.index_l2[:12], torch.arange(12))


def test_f_mem_interval_of_a_sample_that_is_all_or_nothing_is_a_point():
    for ratio, value in ((torch.full((16,), 0.1), 1.0), (torch.full((16,), 0.9), 0.0), (torch.tensor([0.1]), 1.0)):
        f = memorization_fraction(ratio)
        assert (f.value, f.low, f.high, f.defined) == (value, value, value, True)


def test_rescaled_training_image_is_memorized_only_scale_free():
    """A bias-free model may return a training image up to gain and offset: raw pixel distance calls
    that new, the scale-free measure (mean-removed, unit-norm images) calls it memorized."""
    train = images(10, seed=4)
    sample = 0.4 * train[3:4] + 0.3
    raw = nearest_neighbours(sample, train)
    normalized = lambda x: unit_vectors(x, centered=True).reshape(x.shape)  # noqa: E731
    scale_free = nearest_neighbours(normalized(sample), normalized(train))
    assert memorization_fraction(raw.ratio).value == 0.0
    assert memorization_fraction(scale_free.ratio).value == 1.0 and int(scale_free.index_l2) == 3
    assert float(scale_free.d1) == pytest.approx(0.0, abs=1e-7)


def test_empirical_optimal_denoiser_streams_chunks_exactly():
    train = images(7, seed=5)
    y = images(3, seed=6)
    for sigma in (0.05, 0.3):
        # the posterior mean written out: softmax of -|y - x_i|^2 / 2 sigma^2 over training images
        weights = torch.softmax(-torch.cdist(y.flatten(1), train.flatten(1)).square() / (2 * sigma ** 2), dim=1)
        expected = (weights @ train.flatten(1)).reshape(y.shape)
        for chunk in (1, 3, 100):
            denoised = y - EmpiricalOptimalDenoiser(train, sigma=sigma, chunk_size=chunk)(y)
            assert torch.allclose(denoised, expected, atol=1e-12)
    # blind, with the training noise prior: the posterior over (σ_k, i) written out densely
    grid, log_prior = training_noise_prior(count=12)
    n = y[0].numel()
    log_joint = (log_prior[None, :, None] - n * torch.log(grid)[None, :, None]
                 - torch.cdist(y.flatten(1), train.flatten(1)).square()[:, None, :] / (2 * grid[None, :, None] ** 2))
    weights = torch.softmax(log_joint.flatten(1), dim=1).reshape(log_joint.shape).sum(1)
    expected = (weights @ train.flatten(1)).reshape(y.shape)
    for chunk in (2, 100):
        blind = y - EmpiricalOptimalDenoiser(train, sigma_grid=grid, log_prior=log_prior, chunk_size=chunk)(y)
        assert torch.allclose(blind, expected, atol=1e-12)


def test_memorizer_skips_only_sigma_levels_of_negligible_posterior():
    """On the fine default grid, a noisy image's posterior sits on a few σ levels: the memorizer
    visits those alone and still equals the dense posterior over every level, plain and rescaled."""
    train, clean = images(40, seed=10), images(3, seed=11)
    grid, log_prior = training_noise_prior()
    flat_train = train.flatten(1)
    for sigma in (0.02, 0.3):
        y = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        flat = y.flatten(1)
        for rescaled in (False, True):
            memorizer = EmpiricalOptimalDenoiser(train, sigma_grid=grid, log_prior=log_prior, rescaled=rescaled)
            if rescaled:
                norms = flat_train.norm(dim=1)
                inner = flat @ flat_train.T
                sq_dist, log_weight, dims, scale = (flat.square().sum(1, keepdim=True) - (inner / norms).square(),
                                                    -torch.log(norms), flat.shape[1] - 1, inner / norms.square())
            else:
                sq_dist, log_weight, dims, scale = torch.cdist(flat, flat_train).square(), 0, flat.shape[1], 1
            log_joint = (log_prior[None, :, None] - dims * torch.log(grid)[None, :, None] + log_weight
                         - sq_dist[:, None, :] / (2 * grid[None, :, None] ** 2))
            weights = torch.softmax(log_joint.flatten(1), dim=1).reshape(log_joint.shape).sum(1)
            expected = ((weights * scale) @ flat_train).reshape(y.shape)
            assert torch.allclose(y - memorizer(y), expected, atol=1e-12)
            assert len(memorizer._levels(flat)[0]) < len(grid) / 2


def test_training_noise_prior_matches_the_training_draws():
    grid, log_prior = training_noise_prior((0.0, 255.0), "quadratic", count=64)
    drawn = draw_noise_levels(200_000, (0.0, 255.0), "quadratic", torch.Generator().manual_seed(0), "cpu").flatten()
    edges = torch.sqrt(grid[1:] * grid[:-1])  # cell boundaries of the log grid
    share = torch.tensor([((drawn >= lo) & (drawn < hi)).double().mean() for lo, hi in zip(edges[:-1], edges[1:])])
    prior = torch.softmax(log_prior, 0)[1:-1]
    assert torch.allclose(share / share.sum(), prior / prior.sum(), atol=2e-3)


def test_distance_to_memorizer_of_known_denoisers():
    train = images(6, seed=7)
    sigmas = torch.tensor([0.004, 0.5])
    grid, log_prior = training_noise_prior()
    memorizer = EmpiricalOptimalDenoiser(train, sigma_grid=grid, log_prior=log_prior)
    held_out = images(4, seed=8)
    itself = distance_to_memorizer(lambda y: y - memorizer(y), train, held_out, sigmas, batch_size=3)
    assert torch.allclose(itself["distance"], torch.zeros(2, dtype=torch.float64), atol=1e-20)
    # batches of images change nothing: the identity's distance is the same computed 1 or 4 at a time
    ones, fours = (distance_to_memorizer(lambda y: y, train, held_out, sigmas, batch_size=b)["distance"] for b in (1, 4))
    assert torch.allclose(ones, fours, rtol=1e-12)
    # on noisy training images at small σ the memorizer returns the training image: an oracle that
    # returns the clean image is at distance ~0, the identity (which keeps the noise) at ~1
    oracle = iter([train])
    assert float(distance_to_memorizer(lambda y: next(oracle), train, train, sigmas[:1])["distance"][0]) < 1e-6
    identity = distance_to_memorizer(lambda y: y, train, train, sigmas[:1])
    assert float(identity["distance"][0]) == pytest.approx(1.0, abs=1e-6)
    # a held-out image is no fixed point of the memorizer: the oracle is far from it
    oracle = iter([held_out])
    assert float(distance_to_memorizer(lambda y: next(oracle), train, held_out, sigmas[:1])["distance"][0]) > 10


def test_bias_free_memorizer_projects_onto_the_nearest_training_ray():
    """Training images at every scale: the memorizer a bias-free network can be. At small σ it returns
    the projection of y onto the ray of the nearest training image, and it is homogeneous."""
    train = images(5, seed=9)
    sigma = 0.002
    y = 0.6 * train[2:3] + sigma * torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1),
                                               dtype=torch.float64)
    denoised = y - EmpiricalOptimalDenoiser(train, sigma=sigma, rescaled=True)(y)
    x = train[2].flatten()
    projection = (y.flatten() @ x) / (x @ x) * x
    assert torch.allclose(denoised.flatten(), projection, atol=1e-9)
    grid, log_prior = training_noise_prior()
    blind = EmpiricalOptimalDenoiser(train, sigma_grid=grid, log_prior=log_prior, rescaled=True)
    assert torch.allclose(y - blind(y), denoised, atol=1e-3)
    # a denoiser that returns the training images at another scale is far from the plain memorizer;
    # from this one it differs only by the noise along the ray, 1 of the 64 dimensions: ~1/64
    copy = 0.6 * train[:4]
    gap = {rescaled: distance_to_memorizer(lambda v: 0.6 * train[:4].expand_as(v) + 0 * v, train, copy,
                                           torch.tensor([0.002]), rescaled=rescaled)["distance"][0]
           for rescaled in (False, True)}
    assert float(gap[True]) == pytest.approx(1 / 64, rel=0.5) and float(gap[False]) > 1


# --- the transition table -----------------------------------------------------------------------

def _spec():
    return parse_spec({"name": "t", "image_size": 12, "datasets": [{"name": "d", "kind": "discs"}],
                       "architectures": [{"name": "u", "kind": "unet", "params": {"width": 4, "blocks": 1}}],
                       "train_sizes": [1, 10], "analysis": {"bootstrap": 200}})


def _metrics(trial: str, n: int, **values) -> dict:
    base = dict(train_psnr=30.0, test_psnr=20.0, psnr_gap=10.0, psnr_gap_chance=0.5, nn_cosine_centered=0.9,
                memorizer_distance=0.1, memorizer_distance_bias_free=0.05, effective_dim=2.0, symmetry_error=0.5,
                symmetry_error_memorizer=0.9, symmetry_error_gaussian=0.1, ab_cosine_chance=0.8, ab_cosine_centered_chance=0.3, ab_l2_chance=0.2,
                nn_cosine_centered_chance=0.6, f_mem_chance=0.0, f_mem_scale_free_chance=0.0, capped_samples=0,
                diverged_samples=0)
    return {"study_id": "t", "trial_id": trial, "dataset": "d", "architecture": "u", "n": n, **base, **values}


def test_transition_rows_gather_every_measure_per_n():
    metrics = [_metrics("a1", 1, train_psnr=40.0, psnr_gap=20.0, psnr_gap_chance=-1.0),
               _metrics("b1", 1, train_psnr=30.0, psnr_gap=10.0),
               _metrics("a10", 10, memorizer_distance=2.0, symmetry_error=0.2, effective_dim=8.0, diverged_samples=1,
                        nn_cosine_centered_chance=0.7, symmetry_error_memorizer=0.6, f_mem_scale_free_chance=0.1),
               _metrics("b10", 10, memorizer_distance=4.0, symmetry_error=0.4, effective_dim=12.0, capped_samples=2,
                        nn_cosine_centered_chance=0.8, symmetry_error_memorizer=0.8, f_mem_scale_free_chance=0.0)]
    nan = math.nan
    samples = [  # (trial, raw d1/d2, scale-free d1/d2, diverged)
        *[("a1", nan, nan, False)] * 2, *[("b1", nan, nan, False)] * 2,
        ("a10", 0.1, 0.1, False), ("a10", 0.9, 0.1, False), ("a10", 0.0, 0.0, True),  # diverged: left out
        ("b10", 0.2, 0.2, False), ("b10", 0.8, 0.8, False)]
    samples = [{"study_id": "t", "trial_id": t, "d1_d2": r, "d1_d2_scale_free": rs, "diverged": d}
               for t, r, rs, d in samples]
    pairs = [{"pair_id": "p1", "dataset": "d", "architecture": "u", "n": 1, "cosine": 0.9, "cosine_centered": c,
              "l2_normalized": 0.3, "diverged": False} for c in (0.0, 0.2)]
    pairs += [{"pair_id": "p10", "dataset": "d", "architecture": "u", "n": 10, "cosine": 1.0, "cosine_centered": c,
               "l2_normalized": 0.1, "diverged": False} for c in (0.8, 0.6)]
    pairs.append({"pair_id": "p10", "dataset": "d", "architecture": "u", "n": 10, "cosine": math.nan,
                  "cosine_centered": math.nan, "l2_normalized": math.nan, "diverged": True})  # left out
    bases = [{"pair_id": pair_id, "basis_overlap": overlap, "chance": chance}
             for pair_id, overlap, chance in (("p1", 0.1, 0.01), ("p10", 0.7, 0.01), ("p10", 0.5, 0.01),
                                              ("elsewhere", 0.0, 0.5))]
    rows = {r["n"]: r for r in transition_rows(_spec(), metrics, samples, pairs, bases)}
    one, ten = rows[1], rows[10]
    assert one["models"] == 2 and one["train_psnr"] == 35.0 and one["psnr_gap"] == 15.0 and one["psnr_gap_std"] == 5.0
    assert math.isnan(one["f_mem"]) and math.isnan(one["f_mem_scale_free"])  # N = 1: undefined, not 0
    assert one["ab_cosine_centered"] == pytest.approx(0.1) and one["ab_cosine_centered_std"] == pytest.approx(0.1)
    assert one["ab_basis_overlap"] == pytest.approx(0.1)
    # pooled over A and B: 2 of 4 usable samples below 1/3 (raw), 3 of 4 scale-free
    assert ten["f_mem"] == 0.5 and ten["f_mem_scale_free"] == 0.75
    assert ten["f_mem_low"] <= 0.5 <= ten["f_mem_high"]
    assert ten["memorizer_distance"] == 3.0 and ten["symmetry_error"] == pytest.approx(0.3)
    assert ten["memorizer_distance_bias_free"] == pytest.approx(0.05)
    assert ten["effective_dim"] == 10.0 and ten["ab_cosine"] == 1.0 and ten["ab_l2"] == pytest.approx(0.1)
    assert ten["ab_cosine_centered"] == pytest.approx(0.7) and ten["ab_basis_overlap"] == pytest.approx(0.6)
    assert (one["ab_samples"], ten["ab_samples"]) == (2, 2)
    assert (ten["capped_samples"], ten["diverged_samples"]) == (2, 1)
    # beside each measure its chance level and, for the asymmetry, its two references (means over models)
    assert one["nn_cosine_centered_chance"] == 0.6 and ten["nn_cosine_centered_chance"] == pytest.approx(0.75)
    assert one["psnr_gap_chance"] == -0.25 and ten["psnr_gap_chance"] == 0.5
    assert ten["f_mem_scale_free_chance"] == pytest.approx(0.05) and ten["f_mem_chance"] == 0.0
    assert ten["ab_cosine_chance"] == 0.8 and ten["ab_cosine_centered_chance"] == 0.3 and ten["ab_l2_chance"] == 0.2
    assert one["ab_basis_overlap_chance"] == ten["ab_basis_overlap_chance"] == 0.01  # not another pair's
    assert ten["symmetry_error_memorizer"] == pytest.approx(0.7) and ten["symmetry_error_gaussian"] == 0.1


def test_every_measure_in_the_docs_names_known_answer_tests_that_exist():
    """docs/measures.md names, for every measure, the tests that check it on known answers."""
    from pathlib import Path
    import re

    root = Path(__file__).resolve().parents[1]
    sections = re.split(r"^### ", (root / "docs" / "measures.md").read_text(), flags=re.M)[1:]
    assert len(sections) >= 15
    for section in sections:
        measure = section.splitlines()[0]
        known = section.split("- **Known answers:**", 1)
        assert len(known) == 2, measure
        cited = re.findall(r"`(?:(test_\w+\.py)::)?(test_\w+)`", known[1])
        assert cited, measure
        for file, name in cited:
            files = [root / "tests" / file] if file else list((root / "tests").glob("test_*.py"))
            assert any(f"def {name}(" in f.read_text() for f in files), (measure, name)


def test_a_flat_sample_is_not_memorized_and_voids_nothing():
    """A flat sample has no direction once its mean is removed: it counts as not memorized by the
    scale-free measure instead of turning f_mem_scale_free into 'undefined' for the whole model."""
    from gahb_scale.design.measures import _sample_and_match

    spec = parse_spec({"name": "t", "image_size": 12, "datasets": [{"name": "d", "kind": "discs"}],
                       "architectures": [{"name": "u", "kind": "unet", "params": {"width": 4, "blocks": 1}}],
                       "train_sizes": [4], "sampling": {"num_samples": 3}, "analysis": {"bootstrap": 50}})
    train = images(4, seed=10, size=12).float()
    to_grey = lambda y: y - 0.4  # noqa: E731  a residual whose denoiser returns the flat image 0.4
    _, sampled, matches = _sample_and_match(to_grey, train, spec, torch.device("cpu"))
    assert not sampled.diverged.any() and torch.allclose(sampled.samples, torch.full_like(sampled.samples, 0.4))
    assert matches.f_mem_scale_free.defined and matches.f_mem_scale_free.value == 0.0
    assert matches.f_mem.defined


# --- chance levels: what fresh images of the data score -----------------------------------------

def _pixels(*rows: list[float]) -> torch.Tensor:
    """Images of 2×2 pixels, one per row of 4 values."""
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 1, 2, 2)


def test_ab_chance_is_the_mean_similarity_of_disjoint_held_out_pairs():
    held_out = _pixels([1, 0, 0, 0], [1, 1, 0, 0],  # raw cosine 1/√2, centred 1/√3, RMS difference 1/2
                       [0, 1, 2, 3], [3, 2, 1, 0],  # raw 4/14, centred −1 (contrast reversed), RMS √5
                       [9, 9, 9, 0])  # odd one out: in no pair
    pairs = independent_pair_similarity(held_out)
    assert torch.allclose(pairs["cosine"], torch.tensor([1 / math.sqrt(2), 4 / 14], dtype=torch.float64))
    assert torch.allclose(pairs["cosine_centered"], torch.tensor([1 / math.sqrt(3), -1.0], dtype=torch.float64))
    assert torch.allclose(pairs["l2_normalized"], torch.tensor([0.5, math.sqrt(5)], dtype=torch.float64))
    chance = chance_columns(_spec(), _pixels([1, 0, 0, 0], [0, 1, 0, 0]), held_out)
    assert chance["ab_cosine_chance"] == pytest.approx((1 / math.sqrt(2) + 4 / 14) / 2)
    assert chance["ab_cosine_centered_chance"] == pytest.approx((1 / math.sqrt(3) - 1) / 2)
    assert chance["ab_l2_chance"] == pytest.approx((0.5 + math.sqrt(5)) / 2)


def test_nn_chance_of_held_out_copies_is_memorized_and_of_equidistant_images_is_not():
    train = _pixels([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1])
    copies = chance_columns(_spec(), train, _pixels([1, 0, 0, 0], [0, 1, 0, 0]))  # a held-out image = a training image
    assert copies["f_mem_chance"] == copies["f_mem_scale_free_chance"] == 1.0
    assert copies["nn_cosine_centered_chance"] == pytest.approx(1.0)
    # equally far from the first two training images (by raw and by scale-free distance): d1/d2 = 1
    fresh = chance_columns(_spec(), train, _pixels([0, 0, 1, 0], [0, 0, 2, 0]))
    assert fresh["f_mem_chance"] == fresh["f_mem_scale_free_chance"] == 0.0
    assert fresh["nn_cosine_centered_chance"] == pytest.approx(-1 / 3)  # centred (-1,-1,3,-1) vs (3,-1,-1,-1): -4/12


def test_psnr_gap_chance_is_the_gap_on_images_never_seen():
    """A denoiser that halves the noise near its own training images and leaves every other image
    as it is: its gap is 20 log10 2 ≈ 6.02 dB, and on two sets it never saw (its partner's training
    images, held-out images) it does the same, so the gap's chance level is 0."""
    from gahb_scale.analysis import psnr_curve

    # as many images in each set: all three draw the same noise (`psnr_curve`'s common random numbers)
    train = _pixels([1, 0, 0, 0], [0, 1, 0, 0])
    partner, held_out = _pixels([0, 0, 0, 1], [1, 1, 0, 0]), _pixels([0, 1, 1, 0], [1, 0, 0, 1])

    def memorizing(y: torch.Tensor) -> torch.Tensor:
        distance = torch.cdist(y.flatten(1), train.flatten(1))
        nearest = train[distance.argmin(dim=1)]
        near = (distance.min(dim=1).values < 0.2)[:, None, None, None]
        return torch.where(near, nearest + (y - nearest) / 2, y)

    sigmas = torch.tensor([0.01, 0.02, 0.04], dtype=torch.float64)
    curves = {name: psnr_curve(memorizing, images, sigmas, seed=0)
              for name, images in (("train", train), ("test", held_out), ("partner", partner))}
    columns = psnr_columns(curves)
    assert columns["psnr_gap"] == pytest.approx(20 * math.log10(2), abs=1e-9)
    assert columns["psnr_gap_chance"] == pytest.approx(0.0, abs=1e-9)
    assert columns["train_psnr"] - columns["test_psnr"] == columns["psnr_gap"]


def test_median_over_an_even_sigma_grid_is_the_mean_of_the_two_middle_values():
    assert median_over_sigma(torch.tensor([100.0, 1.0, 10.0, 2.0], dtype=torch.float64)) == 6.0  # not 2.0
    assert median_over_sigma(torch.tensor([3.0, 1.0, 2.0])) == 2.0


def test_shrunk_gaussian_fit_is_the_oracle_approximating_shrinkage_and_keeps_the_total_variance():
    covariance = pytest.importorskip("sklearn.covariance")
    for count in (2, 5, 200):  # far below, near and above n = 16 pixels
        train = images(count, seed=count, size=4)
        mean, cov = shrunk_gaussian_fit(train)
        flat = train.flatten(1)
        sample = (flat - flat.mean(0)).T @ (flat - flat.mean(0)) / count
        assert torch.allclose(mean, flat.mean(0)) and torch.allclose(cov.trace(), sample.trace())
        assert torch.allclose(cov, torch.from_numpy(covariance.oas(flat.numpy())[0]))
        assert torch.linalg.eigvalsh(cov).min() > 0  # full rank even at N = 2
    assert torch.equal(shrunk_gaussian_fit(images(1, seed=0, size=4))[1], torch.zeros(16, 16, dtype=torch.float64))
