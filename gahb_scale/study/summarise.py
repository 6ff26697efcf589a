"""Stage 4, summarise the study (on the driver): the study-level tables — transition, PSNR slopes,
shuffled-pixel drop, memorization over training time, its onset, each model's τ_mem and the law
τ_mem ∝ N^b — from the per-model and per-pair tables of the whole study.

The grouping is SQL (DuckDB over Arrow tables); means, sds and the bootstrap of f_mem stay numpy.
SQL hands them each group's values as a list in the order the rows were read: the bootstrap's
intervals depend on that order, and numpy's pairwise sums do in the last bit. A `diverged` flag
that is NULL (a row written before the column existed) counts as not diverged, as it always has.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..analysis import (MemorizationFraction, fit_memorization_law, level_crossing, memorization_fraction,
                        memorized_share, switch_n)
from ..design.measures import fraction_columns, optimal_slope
from ..design.spec import DatasetSpec, StudySpec
from .query import Rows, indexed_table, row_lists, sql_rows
from .store import StudyTables

# per-model columns the transition averages beside the network's own: the Jacobian asymmetry of the
# two analytic references, and the chance levels of the A/B and nearest-neighbour measures
REFERENCE_COLUMNS = ("symmetry_error_memorizer", "symmetry_error_gaussian")
CHANCE_COLUMNS = ("psnr_gap_chance", "ab_cosine_chance", "ab_cosine_centered_chance", "ab_l2_chance",
                  "nn_cosine_centered_chance", "f_mem_chance", "f_mem_scale_free_chance")


def _mean_std(values: list[float] | None) -> tuple[float, float]:
    """Mean and sd of the defined values (a model whose samples all diverged has no NN similarity;
    None: a group with no such values at all)."""
    arr = np.asarray(values or [], dtype=float)
    arr = arr[~np.isnan(arr)]
    return (float(arr.mean()), float(arr.std())) if arr.size else (math.nan, math.nan)


def _with_sd(name: str, values: list[float] | None) -> dict[str, float]:
    """{name: mean, name_std: sd} of the defined values."""
    mean, sd = _mean_std(values)
    return {name: mean, f"{name}_std": sd}


def _pooled_fractions(spec: StudySpec, group: dict) -> dict[str, float | bool]:
    """Both f_mem columns of a group's samples (its lists `d1_d2`, `d1_d2_scale_free` and the
    `trial_id` of each) pooled over its models, their intervals resampling the models too."""
    def pooled(ratios: list[float] | None) -> MemorizationFraction:
        return memorization_fraction(torch.tensor(ratios or [], dtype=torch.float64),
                                     threshold=spec.analysis.memorization_threshold, n_boot=spec.analysis.bootstrap,
                                     seed=0, models=group["trial_id"])
    return {**fraction_columns("f_mem", pooled(group["d1_d2"])),
            **fraction_columns("f_mem_scale_free", pooled(group["d1_d2_scale_free"]))}


def summarise_study(spec: StudySpec, tables: StudyTables) -> dict[str, list[dict]]:
    """Every study-level table, from the study's per-model and per-pair tables."""
    read = {name: tables.table(name)
            for name in ("model_metrics", "samples", "pairs", "pair_bases", "psnr", "snapshot_samples")}
    metrics = read["model_metrics"]
    over_time = memorization_time_rows(spec, metrics, read["snapshot_samples"])
    tau = memorization_tau_rows(spec, metrics, read["snapshot_samples"])
    return {"transition": transition_rows(spec, metrics, read["samples"], read["pairs"], read["pair_bases"]),
            "slopes": slope_rows(spec, metrics), "shuffle_psnr": shuffle_rows(spec, metrics, read["psnr"]),
            "memorization_time": over_time, "memorization_onset": onset_rows(spec, over_time),
            "memorization_tau": tau, "memorization_law": memorization_law_rows(spec, tau)}


def transition_at(spec: StudySpec, tables: StudyTables, n: int) -> list[dict]:
    """The transition rows of one N (every dataset and architecture) from the tables as they are
    now: the study's transition curve, grown while its pairs are compared."""
    read = {name: tables.table(name) for name in ("model_metrics", "samples", "pairs", "pair_bases")}
    size = pc.field("n") == n
    # samples and pair bases carry no N: the joins with the models and pairs of this N select theirs
    read = {name: table.filter(size) if table is not None and name in ("model_metrics", "pairs") else table
            for name, table in read.items()}
    return transition_rows(spec, read["model_metrics"], read["samples"], read["pairs"], read["pair_bases"])


def _slope_theory_applies(dataset: DatasetSpec | None) -> bool:
    """α/(α+1) is the optimal slope only for C^α images with α > 1: this recipe integrates 2-D white
    noise to order β = α for the backgrounds, which are not even continuous for β ≤ 1."""
    return dataset is not None and not math.isnan(optimal_slope(dataset)) and dataset.params["alpha"] > 1


def slope_rows(spec: StudySpec, metrics: Rows) -> list[dict]:
    """Fitted PSNR slope per (dataset, architecture, N), next to α/(α+1) where it is known."""
    groups = sql_rows(f"""
        SELECT dataset, architecture, n, count(*) AS models, {row_lists("psnr_slope")},
               first(optimal_slope ORDER BY row_index) AS optimal_slope
        FROM metrics GROUP BY ALL ORDER BY dataset, architecture, n""",
        metrics=indexed_table(metrics, "dataset", "architecture", "n", "psnr_slope", "optimal_slope"))
    datasets = {dataset.name: dataset for dataset in spec.datasets}
    rows = []
    for group in groups:
        dataset = datasets.get(group["dataset"])
        rows.append({"study_id": spec.name, "dataset": group["dataset"], "architecture": group["architecture"],
                     "n": group["n"], "alpha": None if dataset is None else dataset.params.get("alpha"),
                     "models": group["models"], **_with_sd("psnr_slope", group["psnr_slope"]),
                     "optimal_slope": group["optimal_slope"], "theory_applies": _slope_theory_applies(dataset),
                     "sigma_low": spec.analysis.slope_sigma_range[0],
                     "sigma_high": spec.analysis.slope_sigma_range[1]})
    return rows


def shuffle_rows(spec: StudySpec, metrics: Rows, psnr_rows: Rows) -> list[dict]:
    """Held-out PSNR of each pixel-shuffled dataset next to its unshuffled twin (same kind and
    parameters), per architecture, N and noise level; `drop` = plain − shuffled (dB)."""
    plain = {(dataset.kind, json.dumps(dataset.params, sort_keys=True)): dataset.name for dataset in spec.datasets
             if dataset.pixel_shuffle_seed is None}
    shuffled = [dataset for dataset in spec.datasets if dataset.pixel_shuffle_seed is not None]
    twins = pa.table({"shuffled": [dataset.name for dataset in shuffled],
                      "plain": [plain.get((dataset.kind, json.dumps(dataset.params, sort_keys=True)))
                                for dataset in shuffled]})
    groups = sql_rows(f"""
        WITH outputs AS (
            SELECT dataset, architecture, n, sigma, {row_lists("psnr_in", "psnr_out")}
            FROM psnr JOIN (SELECT trial_id, dataset, architecture, n FROM metrics) USING (trial_id)
            WHERE images = 'test' GROUP BY ALL)
        SELECT twins.plain AS dataset, shuffled.dataset AS shuffled_dataset, shuffled.architecture, shuffled.n,
               shuffled.sigma, shuffled.psnr_in, plain.psnr_out, shuffled.psnr_out AS psnr_out_shuffled
        FROM outputs AS shuffled JOIN twins ON twins.shuffled = shuffled.dataset
        JOIN outputs AS plain ON plain.dataset = twins.plain AND plain.architecture = shuffled.architecture
                             AND plain.n = shuffled.n AND plain.sigma = shuffled.sigma
        ORDER BY shuffled.dataset, shuffled.architecture, shuffled.n, shuffled.sigma""",
        metrics=indexed_table(metrics, "trial_id", "dataset", "architecture", "n"), twins=twins,
        psnr=indexed_table(psnr_rows, "trial_id", "images", "sigma", "psnr_in", "psnr_out"))
    rows = []
    for group in groups:  # its columns are the row's, in order: the lists become their means
        plain_out, shuffled_out = float(np.mean(group["psnr_out"])), float(np.mean(group["psnr_out_shuffled"]))
        rows.append({"study_id": spec.name, **group, "psnr_in": float(np.mean(group["psnr_in"])),
                     "psnr_out": plain_out, "psnr_out_shuffled": shuffled_out, "drop": plain_out - shuffled_out})
    return rows


# A model's snapshot is observed only when at least this share of its samples converged; otherwise
# its f_mem is undefined there and its samples count nowhere. A photograph model at N = 12 had 31 of
# 32 samples diverge at two snapshots, and the one left, a copy, read as f_mem = 1 and timed its onset.
MIN_CONVERGED = 0.5

# the snapshot samples with `observed`: converged, at a snapshot where its model is observed
# (the window's rows keep their `row_index`, so the lists built from them keep the order read)
OBSERVED_SAMPLES = """observed_samples AS (
    SELECT *, diverged IS NOT TRUE AND avg(CASE WHEN diverged IS NOT TRUE THEN 1 ELSE 0 END)
                                       OVER (PARTITION BY trial_id, step) >= $share AS observed
    FROM samples)"""


def memorization_time_rows(spec: StudySpec, metrics: Rows, sample_rows: Rows) -> list[dict]:
    """f_mem (both measures) per (dataset, architecture, N, training step), pooling the converged
    samples of every model observed at that step (MIN_CONVERGED); a step at which no model is
    observed keeps its row, with no samples."""
    groups = sql_rows(f"""
        WITH {OBSERVED_SAMPLES}
        SELECT dataset, architecture, n, step, count(*) FILTER (WHERE observed) AS samples,
               {row_lists("trial_id", "d1_d2", "d1_d2_scale_free", "nn_cosine_centered", where="observed")}
        FROM observed_samples JOIN (SELECT trial_id, dataset, architecture, n FROM metrics) USING (trial_id)
        GROUP BY ALL ORDER BY dataset, architecture, n, step""", {"share": MIN_CONVERGED},
        metrics=indexed_table(metrics, "trial_id", "dataset", "architecture", "n"),
        samples=indexed_table(sample_rows, "trial_id", "step", "diverged", "d1_d2", "d1_d2_scale_free",
                              "nn_cosine_centered"))
    return [{"study_id": spec.name, "dataset": group["dataset"], "architecture": group["architecture"],
             "n": group["n"], "step": group["step"], "samples": group["samples"],
             **_pooled_fractions(spec, group),
             "nn_cosine_centered": _mean_std(group["nn_cosine_centered"])[0]} for group in groups]


def onset_rows(spec: StudySpec, over_time: list[dict]) -> list[dict]:
    """The first training step at which f_mem reaches `analysis.onset_f_mem`, per (dataset,
    architecture, N), by Bonnaire et al.'s f_mem and by the scale-free one; None when it never
    does within training (or f_mem is undefined, N = 1). A step at which no model is observed
    (samples = 0) is skipped: the final f_mem is that of the last step with samples."""
    # NaN is left out by hand: SQL orders it above every number, so it would reach any level
    return sql_rows("""
        SELECT $study AS study_id, dataset, architecture, n,
               min(step) FILTER (WHERE f_mem >= $level AND NOT isnan(f_mem)) AS onset_step,
               min(step) FILTER (WHERE f_mem_scale_free >= $level AND NOT isnan(f_mem_scale_free))
                   AS onset_step_scale_free,
               $level AS onset_f_mem, arg_max(f_mem, step) FILTER (WHERE samples > 0) AS final_f_mem,
               coalesce(max(f_mem) FILTER (WHERE NOT isnan(f_mem)), 'NaN') AS max_f_mem,
               count(*) FILTER (WHERE samples > 0) AS steps_observed
        FROM curves GROUP BY dataset, architecture, n ORDER BY dataset, architecture, n""",
        {"study": spec.name, "level": spec.analysis.onset_f_mem},
        curves=indexed_table(over_time, "dataset", "architecture", "n", "step", "samples", "f_mem", "f_mem_scale_free"))


# the two f_mem measures of the memorization-time law: (name in the tables, d1/d2 column it counts)
LAW_MEASURES = (("f_mem", "d1_d2"), ("f_mem_scale_free", "d1_d2_scale_free"))


def memorization_tau_rows(spec: StudySpec, metrics: Rows, sample_rows: Rows) -> list[dict]:
    """τ_mem per model and f_mem measure: the training step at which the model's own f_mem (over
    the snapshots at which it is observed, MIN_CONVERGED) first reaches `analysis.onset_f_mem`.

    The unit is one model, not the A and B models of a seed pooled: the two are independent
    networks trained on different images, so each is a replicate, and the spread between them
    gives the law an interval even in a study of one seed. `censored`: True when f_mem stays
    below the level through the last snapshot, None when it is undefined at every step (N = 1); such
    models, and those already at the level at their first snapshot, have no `tau` and stay out of
    the fit."""
    ratios = [column for _, column in LAW_MEASURES]
    groups = sql_rows(f"""
        WITH {OBSERVED_SAMPLES}, curves AS (
            SELECT trial_id, step, {row_lists(*ratios, where="observed")}
            FROM observed_samples GROUP BY ALL HAVING bool_or(observed))
        SELECT dataset, architecture, n, seed, pair, split, trial_id, list(step ORDER BY step) AS steps,
               {", ".join(f"list({column} ORDER BY step) AS {column}" for column in ratios)}
        FROM curves JOIN metrics USING (trial_id)
        GROUP BY dataset, architecture, n, seed, pair, split, trial_id
        ORDER BY dataset, architecture, n, seed, pair, split, trial_id""", {"share": MIN_CONVERGED},
        metrics=indexed_table(metrics, "trial_id", "dataset", "architecture", "n", "seed", "pair", "split"),
        samples=indexed_table(sample_rows, "trial_id", "step", "diverged", *ratios))
    level = spec.analysis.onset_f_mem
    rows = []
    for group in groups:
        steps = group["steps"]
        for measure, column in LAW_MEASURES:
            # the value alone: an interval per snapshot would go unused
            curve = [memorized_share(torch.tensor(step_ratios, dtype=torch.float64),
                                     spec.analysis.memorization_threshold) for step_ratios in group[column]]
            first, below, tau = level_crossing(steps, curve, level)
            defined = [value for value in curve if not math.isnan(value)]
            rows.append({"study_id": spec.name, **{key: group[key] for key in (
                             "dataset", "architecture", "n", "seed", "pair", "split", "trial_id")},
                         "measure": measure, "level": level, "first_step": first, "step_below": below, "tau": tau,
                         "censored": None if not defined else first is None, "steps_observed": len(steps),
                         "last_step": steps[-1], "final_f_mem": curve[-1], "max_f_mem": max(defined, default=math.nan)})
    return rows


def memorization_law_rows(spec: StudySpec, tau_rows: list[dict]) -> list[dict]:
    """Bonnaire et al.'s law τ_mem ∝ N tested (`fit_memorization_law`), per (dataset, architecture,
    f_mem measure), over the models with a τ."""
    groups = sql_rows(f"""
        SELECT dataset, architecture, measure, {row_lists("n", "seed", "tau", "censored", "first_step", "step_below")}
        FROM tau GROUP BY ALL ORDER BY dataset, architecture, measure""",
        tau=indexed_table(tau_rows, "dataset", "architecture", "measure", "n", "seed", "tau", "censored", "first_step",
                          "step_below"))
    rows = []
    for group in groups:
        law = fit_memorization_law(group["n"], group["tau"], group["seed"], n_boot=spec.analysis.bootstrap)
        rows.append({"study_id": spec.name, "dataset": group["dataset"], "architecture": group["architecture"],
                     "measure": group["measure"], "level": spec.analysis.onset_f_mem, "exponent": law.exponent,
                     "ci_low": law.ci_low, "ci_high": law.ci_high, "intercept": law.intercept,
                     "n_values": law.n_values, "units": law.units,
                     "censored": sum(flag is True for flag in group["censored"]),
                     "before_first_snapshot": sum(first is not None and below is None
                                                  for first, below in zip(group["first_step"], group["step_below"])),
                     "seeds": law.seeds, "resampled_over": law.resampled_over, "resamples": law.resamples})
    return rows


def transition_rows(spec: StudySpec, metrics: Rows, samples: Rows, pairs: Rows, bases: Rows) -> list[dict]:
    """One row per (dataset, architecture, N): the memorization → generalization transition.

    Both f_mem pool the samples of every model of the group (A and B, all pairs and seeds), diverged
    samples left out, their bootstrap intervals resampling the models and then their samples; the
    other columns average over models (PSNR, nearest neighbours, distance to the memorizer,
    Jacobian) or over sample pairs (A/B).
    """
    per_model = ("train_psnr", "test_psnr", "psnr_gap", "nn_cosine_centered", "memorizer_distance",
                 "memorizer_distance_bias_free", "effective_dim", "symmetry_error", *REFERENCE_COLUMNS,
                 *CHANCE_COLUMNS)
    # a group is any (dataset, architecture, N) with models, compared samples or basis overlaps
    groups = sql_rows(f"""
        WITH models AS (
            SELECT dataset, architecture, n, count(*) AS models, {row_lists(*per_model)},
                   sum(capped_samples) AS capped_samples, sum(diverged_samples) AS diverged_samples
            FROM metrics GROUP BY ALL),
        ratios AS (
            SELECT dataset, architecture, n, {row_lists("trial_id", "d1_d2", "d1_d2_scale_free")}
            FROM samples JOIN (SELECT trial_id, dataset, architecture, n FROM metrics) USING (trial_id)
            WHERE diverged IS NOT TRUE GROUP BY ALL),
        ab AS (
            SELECT dataset, architecture, n, count(*) AS ab_samples,
                   {row_lists("cosine", "cosine_centered", "l2_normalized", prefix="ab_")}
            FROM pairs WHERE diverged IS NOT TRUE GROUP BY ALL),
        basis AS (
            SELECT dataset, architecture, n, {row_lists("basis_overlap", "chance", prefix="ab_")}
            FROM bases JOIN (SELECT DISTINCT pair_id, dataset, architecture, n FROM pairs) USING (pair_id)
            GROUP BY ALL)
        SELECT * FROM models FULL JOIN ratios USING (dataset, architecture, n)
            FULL JOIN ab USING (dataset, architecture, n) FULL JOIN basis USING (dataset, architecture, n)
        ORDER BY dataset, architecture, n""",
        metrics=indexed_table(metrics, "trial_id", "dataset", "architecture", "n", *per_model, "capped_samples",
                              "diverged_samples"),
        samples=indexed_table(samples, "trial_id", "diverged", "d1_d2", "d1_d2_scale_free"),
        pairs=indexed_table(pairs, "pair_id", "dataset", "architecture", "n", "diverged", "cosine", "cosine_centered",
                            "l2_normalized"),
        bases=indexed_table(bases, "pair_id", "basis_overlap", "chance"))
    rows = []
    for group in groups:
        mean = lambda column: _mean_std(group[column])[0]  # noqa: E731
        rows.append({
            "study_id": spec.name, "dataset": group["dataset"], "architecture": group["architecture"], "n": group["n"],
            "models": group["models"] or 0, "train_psnr": mean("train_psnr"), "test_psnr": mean("test_psnr"),
            **_with_sd("psnr_gap", group["psnr_gap"]), **_with_sd("nn_cosine_centered", group["nn_cosine_centered"]),
            **_pooled_fractions(spec, group),
            "memorizer_distance": mean("memorizer_distance"),
            "memorizer_distance_bias_free": mean("memorizer_distance_bias_free"),
            "ab_samples": group["ab_samples"] or 0, "ab_cosine": mean("ab_cosine"),
            **_with_sd("ab_cosine_centered", group["ab_cosine_centered"]), "ab_l2": mean("ab_l2_normalized"),
            "ab_basis_overlap": mean("ab_basis_overlap"), "effective_dim": mean("effective_dim"),
            **{column: mean(column) for column in ("symmetry_error", *REFERENCE_COLUMNS, *CHANCE_COLUMNS)},
            "ab_basis_overlap_chance": mean("ab_chance"),
            "capped_samples": group["capped_samples"] or 0, "diverged_samples": group["diverged_samples"] or 0,
        })
    return with_switch_n(rows, spec.analysis.onset_f_mem)


def with_switch_n(rows: list[dict], level: float) -> list[dict]:
    """`rows` (a transition table) with `switch_n`: per (dataset, architecture), the N where the
    regime switches, read off its scale-free f_mem (`gahb_scale.analysis.switch_n`)."""
    points = {}
    for row in rows:
        points.setdefault((row["dataset"], row["architecture"]), []).append((row["n"], row["f_mem_scale_free"]))
    switch = {group: switch_n(values, level) for group, values in points.items()}
    return [{**row, "switch_n": switch[row["dataset"], row["architecture"]]} for row in rows]
