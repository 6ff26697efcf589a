"""What a finished micro-style study must hold, table by table: shared by the tests that run a study
on local disk, on object storage and on a multi-node cluster."""

from __future__ import annotations

from gahb_scale.design.spec import StudySpec
from gahb_scale.design.trials import expand_trials
from gahb_scale.study.store import StudyStore, run_marker_path

TABLES = ("trials", "train_curves", "model_metrics", "psnr", "samples", "jacobian", "eigen", "pairs", "pair_bases",
          "transition", "disc_tangent", "snapshot_samples", "slopes", "memorization_time", "memorization_onset",
          "memorization_tau", "memorization_law", "memorizer_distance", "spec_models")


def table_rows(results: str) -> dict[str, list[dict]]:
    store = StudyStore(str(results))
    return {name: store.rows(name) for name in TABLES}


def expected_row_counts(spec: StudySpec) -> dict[str, int]:
    """Rows per table of one finished study of one dataset (discs) and one architecture."""
    a, s = spec.analysis, spec.sampling
    models = len(expand_trials(spec))
    pairs = models // 2
    jacobians = a.jacobian_images * len(a.jacobian_sigmas)
    snapshots = len(spec.training.snapshot_steps) + 1  # and the final model
    sizes = len(spec.train_sizes)
    return {"trials": models, "train_curves": models * (spec.training.steps // spec.training.log_every),
            "model_metrics": models, "psnr": models * 3 * len(a.sigmas), "samples": models * s.num_samples,
            "jacobian": models * jacobians, "eigen": models * jacobians * a.eigenvalues_kept,
            "pairs": pairs * s.num_samples, "pair_bases": pairs * jacobians, "transition": sizes,
            "disc_tangent": models * jacobians, "snapshot_samples": models * snapshots * s.num_samples,
            "slopes": sizes, "memorization_time": sizes * snapshots, "memorization_onset": sizes,
            "memorization_tau": models * 2, "memorization_law": 2,  # both f_mem measures
            "memorizer_distance": models * len(a.sigmas), "spec_models": models}


def assert_every_row_once(results: str, spec: StudySpec) -> dict[str, list[dict]]:
    """Every table holds exactly the rows the study makes: none missing, none twice."""
    rows = table_rows(results)
    assert not StudyStore(str(results)).exists(run_marker_path(spec.name)), "the run left its marker behind"
    for name, expected in expected_row_counts(spec).items():
        assert len(rows[name]) == expected, f"{name}: {len(rows[name])} rows, expected {expected}"
        distinct = {repr(sorted(r.items())) for r in rows[name]}
        assert len(distinct) == len(rows[name]), f"{name}: a row is there twice"
        assert {r["study_id"] for r in rows[name]} == {spec.name}, name
    ids = {t.trial_id for t in expand_trials(spec)}
    assert {r["trial_id"] for r in rows["trials"]} == ids == {r["trial_id"] for r in rows["spec_models"]}
    return rows
