"""Stages 2 and 3 as Ray tasks: analyse each trained model (`analyse_model`) and compare each split
pair (`compare_pair`), by `gahb_scale.design.measures`. Each task leaves its arrays and figures in
the store, where the next stage and a later run find them, and returns its rows: the driver alone
writes the tables.
"""

from __future__ import annotations

import io

import torch

from ..design.measures import compare_models, measure_model, model_images
from ..design.spec import StudySpec
from ..design.trials import Trial
from ..models import build_model
from .store import StudyStore, arrays_path, figure_path, load_arrays, model_path, save_arrays, snapshot_path


def load_model(store: StudyStore, trial: Trial, device: torch.device, step: int | None = None) -> torch.nn.Module:
    """The trained network in eval mode (with `step`: its snapshot at that step of training)."""
    path = model_path(trial.trial_id) if step is None else snapshot_path(trial.trial_id, step)
    saved = torch.load(io.BytesIO(store.read_bytes(path)), map_location=device, weights_only=True)
    net = build_model(trial.architecture.kind, **trial.architecture.params)
    net.load_state_dict(saved["state_dict"])
    return net.to(device).eval()


def save_figures(store: StudyStore, spec: StudySpec, trial: Trial, pngs: dict[str, bytes]) -> dict[str, bytes]:
    """Leave a model's figures in the store, where a later run finds them to log them again; returns them."""
    for name, png in pngs.items():  # trusted only once the model's rows are written: no temporary file
        store.write_bytes(figure_path(spec.name, trial.trial_id, name), png, atomic=False)
    return pngs


def analyse_model(spec: StudySpec, trial: Trial, results: str, analysis_key: str,
                  prepared: dict[str, dict] | None = None) -> tuple[dict[str, list[dict]], dict[str, bytes]]:
    """Every per-model table's rows of one trained model (analysed with the settings whose id is
    `analysis_key`), and its figures; its arrays and figures are left in the store at `results`.
    `prepared`: the folders' pools as the run prepared them (`split_images`)."""
    store = StudyStore(results)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tables, arrays, pngs = measure_model(spec, trial, load_model(store, trial, device),
                                         model_images(spec, trial, prepared), analysis_key,
                                         snapshot=lambda step: load_model(store, trial, device, step))
    save_arrays(store, arrays_path(spec.name, trial.trial_id), **arrays)
    return tables, save_figures(store, spec, trial, pngs)


def compare_pair(spec: StudySpec, trial_a: Trial, trial_b: Trial, results: str,
                 analysis_key: str) -> tuple[dict[str, list[dict]], dict[str, dict[str, bytes]]]:
    """The rows of `pairs` and `pair_bases` of models A and B from their arrays in the store, and
    each model's sample figure by trial id (also left in the store)."""
    store = StudyStore(results)
    arrays_a, arrays_b = (load_arrays(store, arrays_path(spec.name, t.trial_id)) for t in (trial_a, trial_b))
    tables, pngs = compare_models(spec, trial_a, trial_b, arrays_a, arrays_b, analysis_key)
    return tables, {trial.trial_id: save_figures(store, spec, trial, pngs[trial.trial_id])
                    for trial in (trial_a, trial_b)}
