"""Stage 3, compare each split pair (a Ray task per pair): the A and B models' samples seed by seed,
and their leading Jacobian eigenvectors at the same noisy held-out images. Each model's sample
figure (`_save_sample_figure`) is drawn here, where both models' arrays are."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..analysis import principal_angles, split_pair_similarity
from . import figures
from .analyse import save_figures, trial_title
from .spec import StudySpec
from .store import StudyStore, arrays_path, load_arrays
from .trials import Trial


def compare_pair(spec: StudySpec, trial_a: Trial, trial_b: Trial, results: str,
                 analysis_key: str) -> tuple[dict[str, list[dict]], dict[str, dict[str, bytes]]]:
    """Sample-by-sample similarity of models A and B, which were given identical noise seeds (rows
    of `pairs` and `pair_bases`), and each model's sample figure beside the other's, by trial id
    (also left in the store)."""
    store = StudyStore(results)
    arrays_a, arrays_b = (load_arrays(store, arrays_path(spec.name, t.trial_id)) for t in (trial_a, trial_b))
    if not np.array_equal(arrays_a["sample_seeds"], arrays_b["sample_seeds"]):
        raise RuntimeError(f"pair {trial_a.pair_id}: models were sampled with different seeds")
    samples_a, samples_b = torch.from_numpy(arrays_a["samples"]), torch.from_numpy(arrays_b["samples"])
    similarity = split_pair_similarity(samples_a, samples_b)
    # a seed whose trajectory diverged in either model has no sample to compare: flagged, its
    # similarities NaN, and left out of the transition's A/B means
    diverged = ~(samples_a.flatten(1).isfinite().all(1) & samples_b.flatten(1).isfinite().all(1))
    base = {"study_id": spec.name, "pair_id": trial_a.pair_id, "analysis_id": analysis_key,
            "trial_id_a": trial_a.trial_id, "trial_id_b": trial_b.trial_id, "dataset": trial_a.dataset.name,
            "architecture": trial_a.architecture.name, "n": trial_a.n, "pair": trial_a.pair, "seed": trial_a.seed}
    pngs = {this[0].trial_id: _save_sample_figure(store, spec, this, other) for this, other in
            (((trial_a, arrays_a), (trial_b, arrays_b)), ((trial_b, arrays_b), (trial_a, arrays_a)))}
    return {"pairs": [{**base, "sample_seed": int(seed), "diverged": bool(diverged[i]),
                       **{name: math.nan if diverged[i] else float(values[i]) for name, values in similarity.items()}}
                      for i, seed in enumerate(arrays_a["sample_seeds"])],
            "pair_bases": _basis_overlaps(arrays_a, arrays_b,
                                          {k: base[k] for k in ("study_id", "pair_id", "analysis_id")})}, pngs


def _save_sample_figure(store: StudyStore, spec: StudySpec, this: tuple[Trial, dict],
                        other: tuple[Trial, dict]) -> dict[str, bytes]:
    """A model's samples beside its partner's (same seeds) and its nearest training images."""
    (trial, arrays), (partner, partner_arrays) = this, other
    shown = min(8, len(arrays["sample_seeds"]))
    columns = {f"model {trial.split} (this)": arrays["samples"], f"model {partner.split}": partner_arrays["samples"],
               f"nearest training image of {trial.split}": arrays["nearest"]}
    png = figures.sample_grid_figure({name: images[:shown] for name, images in columns.items()},
                                     arrays["sample_seeds"][:shown], trial_title(trial))
    return save_figures(store, spec, trial, {"samples.png": png})


def _basis_overlaps(arrays_a: dict, arrays_b: dict, base: dict) -> list[dict]:
    """Generalization seen in the basis: how close the leading Jacobian eigenvectors of A and B are.

    Both models' Jacobians were taken at the same noisy held-out images. Overlap = mean cos² of the
    principal angles between the two k-dimensional leading eigen-subspaces: 1 for the same
    subspace, k/P for P pixels (given as `chance`) on average for unrelated ones.
    """
    sigmas, (n_sigma, n_images, k) = arrays_a["jacobian_sigmas"], arrays_a["eigenvectors"].shape[:3]
    rows = []
    for s in range(n_sigma):
        for image in range(n_images):
            u, v = (torch.from_numpy(arrays["eigenvectors"][s, image]).double().reshape(k, -1).T
                    for arrays in (arrays_a, arrays_b))
            cos2 = torch.cos(principal_angles(u, v)).square()
            rows.append({**base, "image": image, "sigma": float(sigmas[s]), "k": k,
                         "basis_overlap": float(cos2.mean()), "chance": k / u.shape[0]})
    return rows
