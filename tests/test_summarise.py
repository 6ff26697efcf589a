"""The study-level tables (summarise.py) against a plain reference computation, on groups of 12
models whose rows are interleaved: every value must come out bit for bit, so a group pooled or
averaged in another order than the rows' would show (np.mean sums pairwise; the bootstrap of
f_mem draws samples by position)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from gahb_scale.analysis import memorization_fraction
from gahb_scale.design.spec_file import parse_spec
from gahb_scale.study.store import StudyStore, StudyTables
from gahb_scale.study.summarise import (CHANCE_COLUMNS, REFERENCE_COLUMNS, memorization_law_rows,
                                        memorization_tau_rows, memorization_time_rows, onset_rows, shuffle_rows,
                                        slope_rows, summarise_study, transition_rows, with_switch_n)
from gahb_scale.design.transition_columns import TRANSITION_COLUMNS, logged_columns, markdown_table, report_headers

SPEC = parse_spec({"name": "t", "image_size": 12,
                   "datasets": [{"name": "plain", "kind": "discs"},
                                {"name": "shuffled", "kind": "discs", "pixel_shuffle_seed": 3}],
                   "architectures": [{"name": "u", "kind": "unet", "params": {"width": 4, "blocks": 1}}],
                   "train_sizes": [1, 10], "split_pairs": 3, "seeds": [0, 1],
                   "analysis": {"bootstrap": 50, "onset_f_mem": 0.3}})


def _study(study: str = "t", seed: int = 0) -> dict[str, list[dict]]:
    """Rows of 12 models per (dataset, N) — 3 pairs × 2 seeds × A/B — in a shuffled order."""
    rng = np.random.default_rng(seed)
    value = lambda: float(rng.normal(20, 5))  # noqa: E731
    ratio = lambda n: math.nan if n == 1 else float(rng.random())  # noqa: E731  N = 1: no second neighbour
    tables = {name: [] for name in ("model_metrics", "samples", "pairs", "pair_bases", "psnr", "snapshot_samples")}
    for dataset in ("plain", "shuffled"):
        for n in (1, 10):
            for pair in range(6):
                group = {"study_id": study, "dataset": dataset, "architecture": "u", "n": n}
                pair_id = f"{dataset}-{n}-{pair}"
                for split in "AB":
                    trial = {"study_id": study, "trial_id": f"{pair_id}-{split}"}
                    tables["model_metrics"].append({
                        **group, **trial, "pair": pair // 2, "seed": pair % 2, "split": split, "train_psnr": value(), "test_psnr": value(), "psnr_gap": value(),
                        "psnr_slope": float(rng.random()), "optimal_slope": math.nan,
                        "nn_cosine_centered": math.nan if rng.random() < 0.2 else float(rng.random()),
                        "memorizer_distance": float(rng.random()), "memorizer_distance_bias_free": float(rng.random()),
                        "effective_dim": value(), "symmetry_error": float(rng.random()),
                        **{column: float(rng.random()) for column in REFERENCE_COLUMNS + CHANCE_COLUMNS},
                        "capped_samples": int(rng.integers(3)), "diverged_samples": int(rng.integers(2))})
                    tables["samples"] += [{**trial, "diverged": bool(rng.random() < 0.1), "d1_d2": ratio(n),
                                           "d1_d2_scale_free": ratio(n)} for _ in range(8)]
                    tables["snapshot_samples"] += [{**trial, "step": step, "diverged": bool(rng.random() < 0.1),
                                                    "d1_d2": ratio(n), "d1_d2_scale_free": ratio(n),
                                                    "nn_cosine_centered": float(rng.random())}
                                                   for step in (10, 20, 40) for _ in range(4)]
                    tables["psnr"] += [{**trial, "images": images, "sigma": sigma, "psnr_in": 40 - sigma / 2,
                                        "psnr_out": value()} for images in ("train", "test") for sigma in (5.0, 25.0)]
                for _ in range(8):
                    diverged = bool(rng.random() < 0.1)
                    tables["pairs"].append({**group, "pair_id": pair_id, "diverged": diverged,
                                            **{column: math.nan if diverged else float(rng.random())
                                               for column in ("cosine", "cosine_centered", "l2_normalized")}})
                tables["pair_bases"] += [{"study_id": study, "pair_id": pair_id, "basis_overlap": float(rng.random()),
                                          "chance": 2 / 144} for _ in range(4)]
    return {name: [rows[i] for i in rng.permutation(len(rows))] for name, rows in tables.items()}


def _bits(rows: list[dict]) -> list[dict]:
    """Rows with floats as their repr: equal exactly when equal to the bit (NaN equal to NaN)."""
    return [{key: repr(value) if isinstance(value, float) else value for key, value in row.items()} for row in rows]


def _agree(rows: list[dict], expected: list[dict]) -> bool:
    """Whether `rows` are `expected` in its columns, bit for bit."""
    return _bits([{key: row[key] for key in expected[0]} for row in rows]) == _bits(expected)


def _mean(values: list[float], sd: bool = False) -> float:
    defined = np.array([value for value in values if not math.isnan(value)])
    return math.nan if not defined.size else float(defined.std() if sd else defined.mean())


def _fraction(name: str, samples: list[dict], column: str = "d1_d2") -> dict:
    """f_mem of `samples` pooled, its interval resampling their models too."""
    f = memorization_fraction(torch.tensor([sample[column] for sample in samples], dtype=torch.float64),
                              SPEC.analysis.memorization_threshold, SPEC.analysis.bootstrap, seed=0,
                              models=[sample["trial_id"] for sample in samples])
    return {name: f.value, f"{name}_low": f.low, f"{name}_high": f.high}


def _group(row: dict) -> tuple:
    return row["dataset"], row["architecture"], row["n"]


def test_transition_pools_and_averages_each_group_in_row_order():
    tables = _study()
    metrics, pairs = tables["model_metrics"], tables["pairs"]
    group_of = {model["trial_id"]: _group(model) for model in metrics}
    pair_group = {pair["pair_id"]: _group(pair) for pair in pairs}
    expected = []
    for group in sorted(set(group_of.values())):
        models = [model for model in metrics if _group(model) == group]
        usable = [sample for sample in tables["samples"]
                  if group_of[sample["trial_id"]] == group and not sample["diverged"]]
        compared = [pair for pair in pairs if _group(pair) == group and not pair["diverged"]]
        overlaps = [row["basis_overlap"] for row in tables["pair_bases"] if pair_group[row["pair_id"]] == group]
        expected.append({
            "models": len(models), "psnr_gap": _mean([model["psnr_gap"] for model in models]),
            "psnr_gap_std": _mean([model["psnr_gap"] for model in models], sd=True),
            "nn_cosine_centered": _mean([model["nn_cosine_centered"] for model in models]),
            **_fraction("f_mem", usable), **_fraction("f_mem_scale_free", usable, "d1_d2_scale_free"),
            "ab_samples": len(compared), "ab_cosine_centered": _mean([pair["cosine_centered"] for pair in compared]),
            "ab_basis_overlap": _mean(overlaps), "ab_basis_overlap_chance": 2 / 144,
            **{column: _mean([model[column] for model in models]) for column in REFERENCE_COLUMNS + CHANCE_COLUMNS},
            "capped_samples": sum(model["capped_samples"] for model in models)})
    rows = transition_rows(SPEC, metrics, tables["samples"], pairs, tables["pair_bases"])
    assert [row["models"] for row in rows] == [12] * 4
    assert not math.isnan(rows[1]["f_mem"]) and rows[1]["f_mem_low"] < rows[1]["f_mem_high"]  # a real interval
    assert _agree(rows, expected)


def test_every_transition_column_is_described_once_and_the_readme_table_lists_each():
    tables = _study()
    row = transition_rows(SPEC, tables["model_metrics"], tables["samples"], tables["pairs"], tables["pair_bases"])[0]
    names = [column.name for column in TRANSITION_COLUMNS]
    assert sorted(names) == sorted(row)  # no column undescribed, none described that the table lacks
    table = markdown_table().splitlines()
    assert [line.split("`")[1] for line in table[2:]] == names
    assert all(column.description in line for column, line in zip(TRANSITION_COLUMNS, table[2:]))
    # what the report shows and MLflow logs are columns of the table, every measure logged beside its chance level
    assert set(report_headers()) <= set(row) and set(logged_columns()) <= set(row)
    assert {f"{name}_chance" for name in logged_columns() if f"{name}_chance" in row} <= set(logged_columns())


def test_memorization_over_time_onset_shuffle_and_slopes_match_the_reference():
    tables = _study()
    metrics = tables["model_metrics"]
    group_of = {model["trial_id"]: _group(model) for model in metrics}
    over_time = memorization_time_rows(SPEC, metrics, tables["snapshot_samples"])
    expected = []
    for group, step in sorted({(group_of[row["trial_id"]], row["step"]) for row in tables["snapshot_samples"]}):
        usable = [sample for sample in tables["snapshot_samples"]
                  if (group_of[sample["trial_id"]], sample["step"]) == (group, step) and not sample["diverged"]]
        expected.append({"n": group[2], "step": step, "samples": len(usable),
                         **_fraction("f_mem", usable),
                         "nn_cosine_centered": _mean([sample["nn_cosine_centered"] for sample in usable])})
    assert _agree(over_time, expected)

    expected = []
    for group in sorted({_group(row) for row in over_time}):
        curve = [row for row in over_time if _group(row) == group]  # by step
        reached = [row["step"] for row in curve if row["f_mem"] >= SPEC.analysis.onset_f_mem]  # NaN compares False
        expected.append({"onset_step": reached[0] if reached else None, "final_f_mem": curve[-1]["f_mem"],
                         "steps_observed": len(curve)})
    onset = onset_rows(SPEC, over_time)
    assert _agree(onset, expected) and {row["onset_step"] is None for row in onset} == {True, False}

    by_trial = {model["trial_id"]: model for model in metrics}
    for row in shuffle_rows(SPEC, metrics, tables["psnr"]):
        outputs = {dataset: [psnr["psnr_out"] for psnr in tables["psnr"] if psnr["images"] == "test"
                             and psnr["sigma"] == row["sigma"]
                             and _group(by_trial[psnr["trial_id"]]) == (dataset, "u", row["n"])]
                   for dataset in ("plain", "shuffled")}
        assert (row["psnr_out"], row["psnr_out_shuffled"]) == (np.mean(outputs["plain"]), np.mean(outputs["shuffled"]))

    for row in slope_rows(SPEC, metrics):
        slopes = [model["psnr_slope"] for model in metrics if _group(model) == _group(row)]
        assert (row["psnr_slope"], row["psnr_slope_std"]) == (np.mean(slopes), np.std(slopes))


def test_the_store_path_keeps_only_the_study_and_the_order_of_its_files(tmp_path):
    """summarise_study reads Arrow tables (files in path order) where the functions above got dicts,
    and gets the same bits from tables kept in memory as written as from tables read back."""
    store, kept = StudyStore(str(tmp_path / "read")), StudyTables(StudyStore(str(tmp_path / "kept")), "t")
    for study, seed in (("t", 0), ("other", 1)):
        for name, rows in _study(study, seed).items():
            store.upsert(name, rows)
            kept.put(name, rows)
    tables = summarise_study(SPEC, StudyTables(store, "t"))
    assert {name: _bits(rows) for name, rows in summarise_study(SPEC, kept).items()} == \
        {name: _bits(rows) for name, rows in tables.items()}
    read = {name: [row for row in store.rows(name) if row["study_id"] == "t"]
            for name in ("model_metrics", "samples", "pairs", "pair_bases", "psnr", "snapshot_samples")}
    assert _bits(tables["transition"]) == _bits(transition_rows(SPEC, read["model_metrics"], read["samples"],
                                                                read["pairs"], read["pair_bases"]))
    assert _bits(tables["memorization_time"]) == _bits(memorization_time_rows(SPEC, read["model_metrics"],
                                                                              read["snapshot_samples"]))
    tau = memorization_tau_rows(SPEC, read["model_metrics"], read["snapshot_samples"])
    assert len(tau) == 2 * 48 and _bits(tables["memorization_tau"]) == _bits(tau)  # 48 models × 2 measures
    assert _bits(tables["memorization_law"]) == _bits(memorization_law_rows(SPEC, tau))
    assert tables["shuffle_psnr"] == shuffle_rows(SPEC, pa.Table.from_pylist(read["model_metrics"]), read["psnr"])


def test_study_tables_pool_only_the_specs_own_models_and_pairs(tmp_path):
    """A study's folder keeps the files of models an earlier version of its spec had (another N, other
    training settings): the study tables of `StudyTables.of(trials, pairs)` are those of a folder that
    holds the spec's own models and pairs alone."""
    rows = _study()
    kept_pairs = {row["pair_id"] for row in rows["pairs"] if not row["pair_id"].endswith(("-4", "-5"))}
    kept_trials = {f"{pair}-{split}" for pair in kept_pairs for split in "AB"}
    own = lambda row: row["trial_id"] in kept_trials if "trial_id" in row else row["pair_id"] in kept_pairs  # noqa: E731
    everything, alone = StudyStore(str(tmp_path / "everything")), StudyStore(str(tmp_path / "alone"))
    for name, table_rows in rows.items():
        everything.upsert(name, table_rows)
        alone.upsert(name, [row for row in table_rows if own(row)])
    pooled = summarise_study(SPEC, StudyTables(everything, "t").of(kept_trials, kept_pairs))
    assert {name: _bits(r) for name, r in pooled.items()} == \
        {name: _bits(r) for name, r in summarise_study(SPEC, StudyTables(alone, "t")).items()}
    assert {row["models"] for row in pooled["transition"]} == {8}  # 4 of 6 pairs, A and B: not 12


@pytest.mark.parametrize("missing", ["samples", "pairs", "pair_bases"])
def test_a_table_not_written_yet_leaves_its_columns_undefined(missing):
    tables = _study()
    inputs = {name: None if name == missing else tables[name] for name in ("samples", "pairs", "pair_bases")}
    rows = transition_rows(SPEC, tables["model_metrics"], inputs["samples"], inputs["pairs"], inputs["pair_bases"])
    column = {"samples": "f_mem", "pairs": "ab_cosine", "pair_bases": "ab_basis_overlap"}[missing]
    assert len(rows) == 4 and all(math.isnan(row[column]) for row in rows)


def test_columns_an_older_version_did_not_write_are_undefined_not_an_error():
    tables = _study()
    new = list(REFERENCE_COLUMNS + CHANCE_COLUMNS)
    older = pa.Table.from_pylist(tables["model_metrics"]).drop_columns(new)
    rows = transition_rows(SPEC, older, tables["samples"], tables["pairs"], tables["pair_bases"])
    assert len(rows) == 4 and all(math.isnan(row[column]) for row in rows for column in new)
    assert not math.isnan(rows[0]["symmetry_error"])


def test_switch_n_lies_between_the_largest_memorizing_n_and_the_next():
    def table(dataset: str, f_mem: dict[int, float]) -> list[dict]:
        return [{"dataset": dataset, "architecture": "u", "n": n, "f_mem_scale_free": f} for n, f in f_mem.items()]

    rows = (table("switches", {1: math.nan, 2: 1.0, 8: 0.9, 32: 0.2, 128: 0.0})
            + table("relapses", {32: 0.7, 2: 0.6, 8: 0.1, 128: 0.0})  # the largest memorizing N counts
            + table("at_the_level", {2: 0.5, 8: 0.49}) + table("never", {2: 0.1, 8: 0.0})
            + table("always", {2: 1.0, 8: 0.95}) + table("undefined", {1: math.nan}))
    switch = {row["dataset"]: row["switch_n"] for row in with_switch_n(rows, 0.5)}
    assert switch == {"switches": 16.0, "relapses": 64.0, "at_the_level": 4.0, "never": None, "always": None,
                      "undefined": None}
    assert [row["n"] for row in with_switch_n(rows, 0.5)] == [row["n"] for row in rows]  # rows kept in order
