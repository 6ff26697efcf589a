"""`gahb-scale report`: one static HTML page per study, with its figures as PNG files beside it.

Everything on the page comes from the study's tables (`StudyTables`: as this run wrote them, or
read back) and arrays, so the report of a finished study can be rebuilt at any time (and shows whatever part of a study has finished).
Sections appear only when the study measured what they show: the C^α slope table needs C^α
data, the tangent-space section discs, the shuffle section a pixel-shuffled twin dataset, the
memorization-over-time section `training.snapshot_steps`.
"""

from __future__ import annotations

import html
import math

import numpy as np

from .. import figures
from ..data.discs import PARAMETER_NAMES
from ..design.spec import StudySpec
from ..design.transition_columns import report_headers
from .store import StudyStore, StudyTables, arrays_path, load_arrays, report_dir

DISC_DIMS = len(PARAMETER_NAMES)  # the disc family's tangent space is 5-dimensional
# what a report holds once any model is analysed: a folder without them is rebuilt
REPORT_ALWAYS = ("index.html", "transition.png")
_GROUP = {"dataset": "dataset", "architecture": "architecture", "n": "N"}  # the headers of a group's columns


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.3f}".rstrip("0").rstrip(".")
    return html.escape(str(value))


class _Page:
    def __init__(self, title: str):
        self.title, self.parts, self.files = title, [], {}

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def figure(self, name: str, png: bytes, caption: str) -> None:
        self.files[f"{name}.png"] = png
        self.parts.append(f'<figure><img src="{html.escape(name)}.png" alt="{html.escape(caption)}">'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def table(self, rows: list[dict], columns: dict[str, str]) -> None:
        """An HTML table of `rows`; `columns` maps row keys to header text."""
        head = "".join(f"<th>{html.escape(header)}</th>" for header in columns.values())
        body = "".join("<tr>" + "".join(f"<td>{_cell(row.get(key))}</td>" for key in columns) + "</tr>" for row in rows)
        # in a box that scrolls sideways: a table wider than the page would push the page wide
        self.parts.append(f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>')

    def render(self) -> bytes:
        style = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}"
                 ".wide{overflow-x:auto}table{border-collapse:collapse;margin:1em 0;font-size:0.85em}"
                 "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
                 "figure{margin:1em 0}img{max-width:100%}figcaption{font-size:0.85em;color:#555}")
        # The PNGs sit beside the page: if the page was copied without them, say so on the page
        # (and in the browser console, where a headless check looks).
        check = ('<script>window.addEventListener("load", () => { for (const img of document.images) {'
                 ' if (!img.naturalWidth) { const src = img.getAttribute("src");'
                 ' console.error("figure missing: " + src);'
                 ' img.insertAdjacentHTML("afterend", "<p><b>figure missing: " + src + "</b></p>"); } } });</script>')
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{style}</style></head>\n<body>\n"
                + "\n".join(self.parts) + f"\n{check}\n</body></html>\n").encode()


def _with_group(rows: list[dict], owners: dict[str, dict], key: str) -> list[dict]:
    """The rows whose `key` (trial_id or pair_id) is one of `owners`, each with its owner's N,
    dataset and architecture."""
    return [{**row, **{column: owners[row[key]][column] for column in ("n", "dataset", "architecture")}}
            for row in rows if row[key] in owners]


def build_report(spec: StudySpec, store: StudyStore, study_tables: StudyTables) -> dict[str, bytes]:
    """The report's files: {"index.html": ..., "<figure>.png": ...}."""
    page = _Page(f"gahb-scale study {spec.name}")
    page.heading(f"Study {spec.name}", 1)
    if spec.description:
        page.text(spec.description)
    # `study_tables` gives only the models analysed with this spec's settings: their arrays are on disk
    trials = {row["trial_id"]: row for row in study_tables.rows("model_metrics")}
    trained = [row for row in study_tables.rows("trials") if row["trial_id"] in trials]
    devices = ", ".join(sorted({row["device"] for row in trained})) or "–"
    page.text(f"{len(trials)} analysed models; images {spec.image_size}×{spec.image_size}; training budget: "
              f"{spec.training.budget()}; {spec.sampling.num_samples} samples per model; training took "
              # a pack's models share its wall time: count it once per pack (rows before packing: 1)
              f"{sum(row['train_seconds'] / (row.get('pack_size') or 1) for row in trained) / 60:.1f} worker-minutes "
              f"on {devices}.")
    if not trials:
        page.text("Nothing has been analysed yet: run the study first.")
        return {"index.html": page.render()}

    # every table the sections below show, read once
    tables = {name: study_tables.rows(name) for name in (
        "datasets", "transition", "psnr", "train_curves", "memorizer_distance", "eigen", "jacobian", "pairs",
        "pair_bases", "slopes", "disc_tangent", "shuffle_psnr", "memorization_time", "memorization_onset",
        "memorization_tau", "memorization_law")}
    datasets = tables["datasets"]
    if any(row["pool_images"] is not None for row in datasets):
        page.table(datasets, {"dataset": "dataset", "kind": "kind", "pool_images": "images in the pool",
                              "duplicates_removed": "near-duplicates removed before the split",
                              "near_duplicate_threshold": "|correlation| above"})
    transition = tables["transition"]
    page.heading("Memorization → generalization")
    page.figure("transition", figures.transition_figure(transition),
                "Against N: train − test PSNR (±1 sd over models); similarity of samples to their nearest training "
                "image and f_mem by raw pixel distance (Bonnaire et al.) and scale-free (95% bootstrap CIs); "
                "distance of the denoiser to the memorizing solution (no sampling involved); model A vs model B "
                "for the same seed; tr J beside the Jacobian's asymmetry ‖J − Jᵀ‖/‖J‖, which is 0 for an MMSE "
                "denoiser at a known noise level, with that of the blind memorizer and of the blind Gaussian MMSE "
                "denoiser of the same training set (dotted). Thin dashed lines: chance levels, what held-out images "
                "of the data score (A/B: disjoint pairs of them; NN and f_mem: against the model's training set; "
                "PSNR gap: the model's partner's training images, which it never saw, against held-out images). "
                "Dash-dotted vertical line: the switch N, between the largest N whose scale-free f_mem reaches "
                f"{spec.analysis.onset_f_mem:g} and the next. Every measure is defined in the project's docs/measures.md.")
    page.table(transition, report_headers())
    page.text("–: undefined or not measured. f_mem and its chance level need two training images (N ≥ 2); the "
              "switch N needs an N that memorizes followed by one that does not.")
    # each per-model table's rows of the analysed models, with their model's N, by (dataset, architecture)
    per_group = {name: figures.group_rows(_with_group(tables[name], trials, "trial_id"), "dataset", "architecture")
                 for name in ("psnr", "train_curves", "memorizer_distance", "eigen", "jacobian", "disc_tangent")}
    _per_group_sections(page, spec, store, tables["jacobian"], per_group, trials)
    _basis_section(page, tables, per_group["jacobian"])
    _slope_section(page, spec, tables["slopes"])
    _tangent_section(page, spec, per_group["disc_tangent"])
    _shuffle_section(page, spec, tables["shuffle_psnr"])
    _time_section(page, spec, tables["memorization_time"], tables["memorization_onset"])
    _law_section(page, spec, tables["memorization_tau"], tables["memorization_law"])
    return {"index.html": page.render(), **page.files}


def _slug(*parts) -> str:
    return "-".join(str(p) for p in parts).replace("/", "_").replace(" ", "_")


def _per_group_sections(page: _Page, spec: StudySpec, store: StudyStore, jacobian: list[dict],
                        per_group: dict[str, dict[tuple, list[dict]]], trials: dict[str, dict]) -> None:
    asymmetry = {(row["trial_id"], row["sigma"], row["image"]): row["symmetry_error"] for row in jacobian}
    discs = {dataset.name for dataset in spec.datasets
             if dataset.kind == "discs" and dataset.pixel_shuffle_seed is None}
    for (dataset, architecture), models in figures.group_rows(list(trials.values()), "dataset", "architecture").items():
        of_group = {name: groups.get((dataset, architecture), []) for name, groups in per_group.items()}
        slug, title = _slug(dataset, architecture), f"{dataset} / {architecture}"
        page.heading(title)
        page.figure(f"psnr-{slug}", figures.psnr_by_n_figure(of_group["psnr"], title),
                    "Denoising performance per N on held-out images (solid) and on the model's own training images "
                    "(dashed).")
        page.figure(f"loss-{slug}", figures.loss_curves_figure(of_group["train_curves"], title),
                    "Training loss per model.")
        page.figure(f"memorizer-{slug}", figures.memorizer_distance_figure(of_group["memorizer_distance"], title),
                    "Distance to the memorizing solution against noise level: ‖f(y) − f_mem(y)‖² / ‖y − x‖² on noisy "
                    "held-out images (±1 sd over models), where f_mem is the exact blind MMSE denoiser of the "
                    "model's own training set (left), or of its training images at every scale (right: the "
                    "memorizer a bias-free network can be, since f(a·y) = a·f(y)). 0 would mean the network is that "
                    "memorizer, but the level depends mostly on the memorizer itself: at low σ it returns a training "
                    "image, at N = 1 always the same one, far from the held-out input, at large N a near "
                    "neighbour of it. So the distance falls with N even where networks generalize, and at low σ, "
                    "where a network returns nearly its input, it is large even for one whose samples copy its "
                    "training image (see docs/measures.md in the project).")
        # the first pair and seed of every N: samples and eigenvectors of A and B side by side
        shown_pair = min((model["pair"], model["seed"]) for model in models)
        shown_models = [model for model in models if (model["pair"], model["seed"]) == shown_pair]
        first = {n: {model["split"]: model["trial_id"] for model in models_of_n}
                 for (n,), models_of_n in figures.group_rows(shown_models, "n").items()}
        complete = [n for n, split in first.items() if set(split) == {"A", "B"}]
        if complete:
            arrays = {n: {split: load_arrays(store, arrays_path(spec.name, first[n][split])) for split in "AB"}
                      for n in complete}
            head = arrays[complete[0]]["A"]  # its seeds, noise levels and Jacobian inputs are every model's
            shown = len(head["sample_seeds"][:4])
            rows = [(n, {"A": arrays[n]["A"]["samples"][:shown], "B": arrays[n]["B"]["samples"][:shown],
                         "nearest": arrays[n]["A"]["nearest"][:shown]}) for n in complete]
            page.figure(f"samples-{slug}", figures.samples_by_n_figure(rows, head["sample_seeds"][:shown], title),
                        "Samples of models A and B drawn with the same seeds, and the training image of A nearest "
                        "to A's sample (NN of A), each shown stretched to its own grey range (a bias-free model's "
                        "samples are images up to gain). Memorization: A equals its nearest training image; "
                        "generalization: A ≈ B and both differ from it.")
            vectors = {n: (arrays[n]["A"]["eigenvectors"], arrays[n]["B"]["eigenvectors"]) for n in complete}
            inputs = head["jacobian_inputs"]
            for sigma_index, sigma in enumerate(head["jacobian_sigmas"]):
                for image in range(min(2, len(inputs))):  # a few images; the 8 leading vectors stay legible
                    by_n = [(n, vectors_a[sigma_index, image, :8], vectors_b[sigma_index, image, :8],
                             *(asymmetry[(first[n][split], float(sigma), image)] for split in "AB"))
                            for n, (vectors_a, vectors_b) in vectors.items()]
                    page.figure(f"eigenvectors-{slug}-s{sigma_index}-i{image}",
                                figures.eigenvectors_ab_figure(by_n, inputs[image], float(sigma),
                                                               f"{title}, image {image}"),
                                f"Geometry-adaptive harmonic basis: leading eigenvectors of the symmetric part "
                                f"of the Jacobian of A and of B at the same noisy held-out image {image} "
                                f"(σ = {float(sigma):g}/255); 'asym' is ‖J − Jᵀ‖/‖J‖ of that Jacobian.")
        page.figure(f"spectra-{slug}", figures.spectra_by_n_figure(of_group["eigen"], of_group["jacobian"], title,
                                                                   DISC_DIMS if dataset in discs else None),
                    "Eigenvalues of the symmetric part of the Jacobian against rank (mean over images and models), "
                    "with the Jacobians' mean asymmetry ‖J − Jᵀ‖/‖J‖: an MMSE denoiser's Jacobian is symmetric, so "
                    "the spectrum describes the network only where that number is small.")


def _basis_section(page: _Page, tables: dict[str, list[dict]], asymmetry: dict[tuple, list[dict]]) -> None:
    rows = _with_group(tables["pair_bases"], {pair["pair_id"]: pair for pair in tables["pairs"]}, "pair_id")
    if not rows:
        return
    page.heading("Generalization in the basis: model A vs model B")
    for (dataset, architecture), overlaps in figures.group_rows(rows, "dataset", "architecture").items():
        page.figure(f"basis-overlap-{_slug(dataset, architecture)}",
                    figures.basis_overlap_figure(overlaps, asymmetry.get((dataset, architecture), []),
                                                 f"{dataset} / {architecture}"),
                    f"Left: mean cos² of the principal angles between the {overlaps[0]['k']} leading Jacobian "
                    f"eigenvectors of A and of B at the same noisy held-out images (±1 sd over images and pairs); "
                    f"dotted: chance. Right: the asymmetry ‖J − Jᵀ‖/‖J‖ of those Jacobians (±1 sd over models and "
                    f"images).")


def _slope_section(page: _Page, spec: StudySpec, slopes: list[dict]) -> None:
    if not any(row["alpha"] is not None for row in slopes):
        return
    lo, hi = spec.analysis.slope_sigma_range
    page.heading("C^α images: PSNR slope against the optimal α/(α+1)")
    page.figure("calpha-slopes", figures.slope_figure(slopes, spec.name),
                f"Slope of output vs input PSNR on held-out images, fitted over σ in [{lo:g}, {hi:g}] grey levels "
                "(±1 sd over models), and the optimal slope α/(α+1).")
    page.table([{**row, "diff": row["psnr_slope"] - row["optimal_slope"],
                 "theory": "yes" if row["theory_applies"] else "no: α ≤ 1"} for row in slopes],
               {**_GROUP, "alpha": "α", "models": "models", "psnr_slope": "fitted slope", "psnr_slope_std": "sd",
                "optimal_slope": "α/(α+1)", "diff": "fitted − optimal", "theory": "α/(α+1) optimal?"})
    if not all(row["theory_applies"] for row in slopes if row["alpha"] is not None):
        page.text("α ≤ 1 lies outside the theory: the backgrounds of this recipe (2-D white noise integrated to "
                  "order β = α) are not continuous for β ≤ 1, so α/(α+1) is not the optimal slope there.")


def _tangent_section(page: _Page, spec: StudySpec, groups: dict[tuple, list[dict]]) -> None:
    if not groups:
        return
    page.heading("Discs: the Jacobian and the 5-D tangent space of the family")
    measures = ("energy_inside", "trace_inside", "trace_total", "leading_alignment", "eigenvalues_above")
    table = [{"dataset": dataset, "architecture": architecture, "n": n, "sigma": sigma,
              **{measure: float(np.mean([row[measure] for row in rows])) for measure in measures}}
             for (dataset, architecture), group in groups.items()
             for (n, sigma), rows in figures.group_rows(group, "n", "sigma").items()]
    for (dataset, architecture), group in groups.items():
        page.figure(f"tangent-{_slug(dataset, architecture)}",
                    figures.disc_tangent_figure(group, f"{dataset} / {architecture}"),
                    "The optimal denoiser at low noise projects onto the 5-D tangent space (energy inside 1, trace "
                    "5, five eigenvalues near 1). What the network keeps beyond it are its GAHB components.")
    page.table(table, {**_GROUP, "sigma": "σ", "energy_inside": "energy inside tangent", "trace_inside": "tr inside",
                       "trace_total": "tr J", "leading_alignment": "top-5 eigvecs vs tangent (mean cos²)",
                       "eigenvalues_above": f"eigenvalues > {spec.analysis.eigenvalue_threshold:g}"})


def _shuffle_section(page: _Page, spec: StudySpec, rows: list[dict]) -> None:
    if not rows:
        return
    page.heading("Shuffled pixels")
    page.figure("shuffle", figures.shuffle_figure(rows, spec.name),
                "The same images with and without one fixed pixel permutation (train and test shuffled alike). "
                "A permutation changes no pixel statistics, only the geometry the network can exploit.")
    page.table(rows, {"dataset": "dataset", "shuffled_dataset": "shuffled twin", "architecture": "architecture",
                      "n": "N", "sigma": "σ", "psnr_in": "PSNR in", "psnr_out": "PSNR out",
                      "psnr_out_shuffled": "PSNR out shuffled", "drop": "drop dB"})


def _time_section(page: _Page, spec: StudySpec, rows: list[dict], onset: list[dict]) -> None:
    if not rows:
        return
    page.heading("Memorization over training time")
    page.figure("memorization-time", figures.memorization_time_figure(rows, onset, spec.name),
                f"f_mem of samples drawn from snapshots of the weights during training (same seeds at every step): "
                f"raw pixels (Bonnaire et al., solid) and scale-free (dashed); onset = first step with "
                f"f_mem ≥ {spec.analysis.onset_f_mem:g}, by each measure (right, same line styles).")
    page.table(onset, {**_GROUP, "onset_step": "onset step", "onset_step_scale_free": "onset step (scale-free f_mem)",
                       "max_f_mem": "max f_mem", "final_f_mem": "final f_mem", "steps_observed": "snapshots"})


_MEASURE_NAMES = {"f_mem": "Bonnaire et al.'s f_mem", "f_mem_scale_free": "the scale-free f_mem"}


def law_statement(row: dict) -> str:
    """One sentence on a `memorization_law` row: whether its exponent agrees with τ_mem ∝ N (the
    95% CI holds 1), is shallower (the whole CI below 1) or steeper (above)."""
    subject = f"{row['dataset']}/{row['architecture']}, by {_MEASURE_NAMES[row['measure']]}"
    counts = (f"{row['units']} models at {row['n_values']} N values; {row['censored']} never reached "
              f"f_mem ≥ {row['level']:g} within training")
    if math.isnan(row["exponent"]):
        return f"{subject}: no fit, it needs τ_mem at 2 N values at least ({counts})."
    fit = f"{subject}: τ_mem ∝ N^{row['exponent']:.2f}"
    if math.isnan(row["ci_low"]):
        why = "" if row["resampled_over"] else ": one model at each N value, so every resample would be the fit itself"
        return f"{fit}, with no interval{why} ({counts})."
    fit += f" (95% CI {row['ci_low']:.2f} – {row['ci_high']:.2f}, resampled over {row['resampled_over']}; {counts})"
    if row["ci_low"] <= 1 <= row["ci_high"]:
        return f"{fit}. This agrees with Bonnaire et al.'s τ_mem ∝ N: the interval holds 1."
    return (f"{fit}. This is {'shallower' if row['ci_high'] < 1 else 'steeper'} than Bonnaire et al.'s τ_mem ∝ N: "
            f"the interval lies {'below' if row['ci_high'] < 1 else 'above'} 1.")


def _law_section(page: _Page, spec: StudySpec, tau_rows: list[dict], law: list[dict]) -> None:
    if not law:
        return
    page.heading("The memorization-time law", level=3)
    page.figure("memorization-law", figures.memorization_law_figure(tau_rows, law, spec.name),
                f"τ_mem of each model: the training step at which its f_mem first reaches {spec.analysis.onset_f_mem:g}, "
                f"interpolated linearly in log step between the snapshots on either side; the line log τ_mem = a + "
                f"b·log N fitted over them, and the slope 1 of Bonnaire et al.'s τ_mem ∝ N. Models that never reach "
                f"the level (censored) or reach it by the first snapshot are drawn at that snapshot and left out of "
                f"the fit.")
    for row in law:
        page.text(law_statement(row))
    page.table(law, {"dataset": "dataset", "architecture": "architecture", "measure": "measure",
                     "exponent": "exponent b", "ci_low": "95% CI low", "ci_high": "95% CI high",
                     "intercept": "intercept a (ln τ at N = 1)", "n_values": "N values", "units": "models fitted",
                     "censored": "censored", "before_first_snapshot": "reached by the first snapshot",
                     "seeds": "seeds", "resampled_over": "resampled over"})


def write_report(spec: StudySpec, store: StudyStore, tables: StudyTables) -> dict[str, bytes]:
    """Build the report and write it under `reports/<study>/` of the results; returns its files."""
    files = build_report(spec, store, tables)
    for name, data in files.items():  # trusted only once the report's stamp is written: no temporary file
        store.write_bytes(f"{report_dir(spec.name)}/{name}", data, atomic=False)
    # figures of an earlier build that this one no longer has (e.g. a section that moved)
    for name in set(store.files_below(report_dir(spec.name), recursive=False)) - files.keys():
        store.fs.delete_file(store.path(f"{report_dir(spec.name)}/{name}"))
    return files
