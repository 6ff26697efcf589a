"""Figures of a study as PNG bytes (matplotlib, no display needed), drawn from table rows (dicts) and
arrays: no Ray, MLflow or Parquet, so a notebook draws them from a table's rows as the report does.
The per-model rows the study-level figures draw carry their model's N (`n`)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _png(fig, title: str | None = None) -> bytes:
    """The figure as PNG bytes, under `title` if given; the figure is closed."""
    if title is not None:
        fig.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


BELOW = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.16)}  # a legend below its panel: curves stay visible
# Output vs input PSNR: the curves flatten out high up, so a short legend in the lower right hides none of them.
LOWER_RIGHT = "lower right"


def _label(ax, xlabel: str, ylabel: str | None, title: str, **legend) -> None:
    """A panel's axis labels, title, grid and legend."""
    ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a panel with nothing to draw (N = 1 alone has no f_mem) has no legend
        ax.legend(fontsize=7, **legend)


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, **legend) -> bytes:
    _label(ax, xlabel, ylabel, title, **legend)
    return _png(fig)


def _measured_ticks(ax, values: list, fmt: str = "") -> None:
    """A log x axis ticked at the measured values (σ levels, N), not log-minor clutter."""
    ax.set_xscale("log")
    ax.set_xticks(values, [format(value, fmt) for value in values])
    ax.minorticks_off()


def _n_axis(ax, rows: list[dict]) -> None:
    """A log axis of the rows' N: ticked at each N within two decades, where matplotlib labels its
    minor ticks too ("2×10⁰3×10⁰4×10⁰" run together); at its decades beyond, where N's own labels would."""
    ns = sorted({row["n"] for row in rows})
    if ns and ns[-1] <= 100 * ns[0]:
        _measured_ticks(ax, ns)
    else:
        ax.set_xscale("log")


def _mean_sd(rows: list[dict], key: str, column: str) -> tuple[list, list[float], list[float]]:
    """The values of `key` in order, and for each the mean and sd of `column` over its rows."""
    groups = group_rows(rows, key)
    values = [[row[column] for row in group] for group in groups.values()]
    return [value for (value,) in groups], [np.mean(v) for v in values], [np.std(v) for v in values]


def _errorbar_ci(ax, n, rows: list[dict], name: str, **style) -> None:
    """A bootstrap-interval column (name, name_low, name_high) as error bars (NaN: nothing drawn)."""
    column = lambda key: np.array([row[key] for row in rows], dtype=float)  # noqa: E731
    value, low, high = column(name), column(f"{name}_low"), column(f"{name}_high")
    ax.errorbar(n, value, yerr=[np.nan_to_num(value - low), np.nan_to_num(high - value)], capsize=3, **style)


def transition_figure(rows: list[dict]) -> bytes:
    """The phase transition against N: PSNR gap, memorization, distance to the memorizing solution,
    A/B similarity, and the Jacobian's effective dimension beside its asymmetry. Dashed grey-toned
    lines are chance levels (what images of the data that the model never saw score), dotted ones the
    asymmetry of the two analytic references; a vertical line marks each curve's switch N."""
    fig, axes = plt.subplots(1, 5, figsize=(23, 3.8))
    fig.subplots_adjust(wspace=0.35)
    asymmetry_axis = axes[4].twinx()
    for (dataset, architecture), points in group_rows(rows, "dataset", "architecture").items():
        points = sorted(points, key=lambda row: row["n"])
        n = [row["n"] for row in points]
        label = f"{dataset} / {architecture}"
        # a column a table of an older version lacks is drawn as nothing (NaN)
        col = lambda key: np.array([row.get(key) for row in points], dtype=float)  # noqa: E731
        gap = axes[0].errorbar(n, col("psnr_gap"), yerr=col("psnr_gap_std"), marker="o", capsize=3, label=label)
        _chance(axes[0], n, col("psnr_gap_chance"), gap.lines[0], f"{label}: chance (images it never saw)", "o")
        line = axes[1].plot(n, col("nn_cosine_centered"), marker="o", label=f"{label}: NN centred cosine")[0]
        _errorbar_ci(axes[1], n, points, "f_mem", marker="s", ls="--", color=line.get_color(),
                     label=f"{label}: f_mem (raw pixels)")
        _errorbar_ci(axes[1], n, points, "f_mem_scale_free", marker="D", ls=":", color=line.get_color(),
                     label=f"{label}: f_mem (scale-free)")
        for column, name, marker in (("nn_cosine_centered_chance", "NN centred cosine", "o"),
                                     ("f_mem_chance", "f_mem raw", "s"), ("f_mem_scale_free_chance", "f_mem scale-free", "D")):
            _chance(axes[1], n, col(column), line, f"{label}: {name}, chance", marker)
        line = axes[2].plot(n, col("memorizer_distance"), marker="o", label=f"{label}: to the memorizer")[0]
        axes[2].plot(n, col("memorizer_distance_bias_free"), marker="D", ls="--", color=line.get_color(),
                     label=f"{label}: to the bias-free memorizer")
        centred = axes[3].errorbar(n, col("ab_cosine_centered"), yerr=col("ab_cosine_centered_std"), marker="o",
                                   capsize=3, label=f"{label}: centred cosine").lines[0]
        raw = axes[3].plot(n, col("ab_cosine"), marker="^", ls=":", label=f"{label}: raw cosine")[0]
        basis = axes[3].plot(n, col("ab_basis_overlap"), marker="s", ls="--",
                             label=f"{label}: Jacobian eigenbasis overlap")[0]
        for line, column, name in ((centred, "ab_cosine_centered_chance", "centred cosine"),
                                   (raw, "ab_cosine_chance", "raw cosine"),
                                   (basis, "ab_basis_overlap_chance", "basis overlap (k/P)")):
            _chance(axes[3], n, col(column), line, f"{label}: {name}, chance", line.get_marker())
        line = axes[4].plot(n, col("effective_dim"), marker="o", label=f"{label}: tr J")[0]
        asymmetry_axis.plot(n, col("symmetry_error"), marker="x", ls="--", color=line.get_color(),
                            label=f"{label}: ‖J − Jᵀ‖/‖J‖ (right)")
        for column, name, marker in (("symmetry_error_memorizer", "memorizer", "v"),
                                     ("symmetry_error_gaussian", "Gaussian MMSE", "^")):
            asymmetry_axis.plot(n, col(column), marker=marker, ls=":", lw=1, color=line.get_color(), alpha=0.6,
                                label=f"{label}: {name} reference (right)")
        switch = points[0].get("switch_n")
        if switch is not None:
            for ax in axes:
                ax.axvline(switch, color=line.get_color(), ls="-.", lw=1, alpha=0.7,
                           label=f"{label}: switch N ≈ {switch:.3g}" if ax is axes[0] else None)
    axes[2].set_yscale("log")
    asymmetry_axis.set_ylim(bottom=0)
    asymmetry_axis.set_ylabel("‖J − Jᵀ‖/‖J‖ (0 for an MMSE denoiser)", fontsize=8)
    titles = ["train − test PSNR (dB)", "memorization (f_mem: 95% bootstrap CI)", "distance to the memorizing "
              "solution\n‖f − f_mem‖² / noise energy, median over σ", "model A vs model B", "effective dimension tr J"]
    handles = [h for ax in (axes[4], asymmetry_axis) for h in ax.get_legend_handles_labels()[0]]
    for i, (ax, title) in enumerate(zip(axes, titles)):
        _n_axis(ax, rows)
        _label(ax, "training-set size N", None, title, **BELOW, **({"handles": handles} if i == 4 else {}))
    return _png(fig)


def _chance(ax, n, values: np.ndarray, line, label: str, marker: str) -> None:
    """A chance level: dashed, thin, in the colour of the measure it belongs to, with its marker
    small and hollow (a panel may hold the chance levels of several measures)."""
    ax.plot(n, values, ls=(0, (4, 3)), lw=1, color=line.get_color(), alpha=0.55, label=label, marker=marker,
            markersize=3, fillstyle="none")


def memorizer_distance_figure(rows: list[dict], title: str) -> bytes:
    """Distance to the memorizing solution against σ, one colour per N (mean ±1 sd over models):
    to the training set's MMSE denoiser (left) and to its bias-free version (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    by_n = group_rows(rows, "n")
    sigmas = sorted({row["sigma"] for row in rows})
    for ax, column, name in ((axes[0], "distance", "to the training set's MMSE denoiser"),
                             (axes[1], "distance_bias_free", "to the MMSE denoiser of the training images at every "
                                                             "scale (bias-free)")):
        for colour, ((n,), rows_of_n) in zip(_colours(len(by_n)), by_n.items()):
            levels, mean, sd = _mean_sd(rows_of_n, "sigma", column)
            ax.errorbar(levels, mean, yerr=sd, marker="o", capsize=2, color=colour, label=f"N={n}")
        ax.set_yscale("log")  # before the σ axis, whose minor ticks go on both axes
        _measured_ticks(ax, sigmas, "g")
        _label(ax, "noise level σ (grey levels)", None, name)
    axes[0].set_ylabel("‖f(y) − f_mem(y)‖² / ‖y − x‖²")
    return _png(fig, title)


def psnr_figure(psnr_rows: list[dict], title: str) -> bytes:
    """Output vs input PSNR of one model on its training images, held-out images and its partner's
    training images (never seen: how far apart two unseen sets of images lie by themselves)."""
    fig, ax = plt.subplots(figsize=(4.5, 3.8))
    for images, label in (("train", "its training images"), ("test", "held-out images"),
                          ("partner", "partner's training images")):
        curve = sorted((row for row in psnr_rows if row["images"] == images), key=lambda row: row["psnr_in"])
        ax.plot([row["psnr_in"] for row in curve], [row["psnr_out"] for row in curve], marker="o", label=label)
    lo = min(row["psnr_in"] for row in psnr_rows)
    hi = max(row["psnr_in"] for row in psnr_rows)
    ax.plot([lo, hi], [lo, hi], color="grey", ls=":", label="identity")
    return _finish(fig, ax, "input PSNR (dB)", "output PSNR (dB)", title, loc=LOWER_RIGHT)


def sample_grid_figure(columns: dict[str, np.ndarray], seeds: np.ndarray, title: str) -> bytes:
    """Images side by side per seed, e.g. {"model A": ..., "model B": ..., "nearest training image": ...},
    each stretched to its own grey range."""
    rows = len(seeds)
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.6 * rows), squeeze=False)
    for j, (name, images) in enumerate(columns.items()):
        for i in range(rows):
            ax = axes[i, j]
            _image(ax, images[i, 0], stretch=True)
            if i == 0:
                ax.set_title(name, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"seed {int(seeds[i])}", fontsize=7)
    return _png(fig, title)


def _asymmetry(jacobian_rows: list[dict]) -> dict[tuple[float, int], float]:
    """(σ, image) -> ‖J − Jᵀ‖/‖J‖ of one model, from its `jacobian` table rows."""
    return {(row["sigma"], row["image"]): row["symmetry_error"] for row in jacobian_rows}


def spectrum_figure(eigen_rows: list[dict], jacobian_rows: list[dict], title: str) -> bytes:
    """Eigenvalues of one model's Jacobians, each curve labelled with the Jacobian's asymmetry (the
    eigen-decomposition is of its symmetric part, which describes it only when that is small)."""
    fig, ax = plt.subplots(figsize=(4.5, 3.8))
    asymmetry = _asymmetry(jacobian_rows)
    for (sigma, image), curve in group_rows(eigen_rows, "sigma", "image").items():
        points = sorted((row["k"], row["eigenvalue"]) for row in curve)
        ax.plot([k + 1 for k, _ in points], [v for _, v in points],
                label=f"σ={sigma:g}/255, image {image}: ‖J−Jᵀ‖/‖J‖ = {asymmetry[(sigma, image)]:.2f}")
    ax.set_xscale("log")
    return _finish(fig, ax, "k", "eigenvalue λ_k of the Jacobian", title)


def eigenvector_figure(eigenvectors: np.ndarray, sigmas: np.ndarray, inputs: np.ndarray, jacobian_rows: list[dict],
                       title: str) -> bytes:
    """Rows: (σ, image); columns: the noisy-image's clean version, then the leading eigenvectors of
    the Jacobian's symmetric part; each row says how asymmetric the Jacobian itself was."""
    n_sigma, n_images, k = eigenvectors.shape[:3]
    asymmetry = _asymmetry(jacobian_rows)
    fig, axes = plt.subplots(n_sigma * n_images, k + 1, figsize=(1.3 * (k + 1), 1.3 * n_sigma * n_images),
                             squeeze=False)
    for s in range(n_sigma):
        for i in range(n_images):
            _eigenvector_row(axes[s * n_images + i], inputs[i, 0], eigenvectors[s, i],
                             f"σ={sigmas[s]:g}\nasym {asymmetry[(float(sigmas[s]), i)]:.2f}")
    return _png(fig, title)


# ---- study-level figures of the report ---------------------------------------------------------


def group_rows(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """`rows` grouped by their values of `keys`: the groups in the order of those values (None
    last, as SQL orders NULL), each group's rows in their order in `rows`."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in keys), []).append(row)
    return dict(sorted(groups.items(), key=lambda group: [(value is None, value) for value in group[0]]))


def _colours(count: int):
    return plt.cm.viridis(np.linspace(0, 0.9, max(count, 1)))


def _eigenvector_row(row, clean: np.ndarray, vectors: np.ndarray, ylabel: str, stretch: bool = False) -> None:
    """A row of panels: the clean image, then each eigenvector (one channel) on a diverging map."""
    _image(row[0], clean, stretch=stretch)
    row[0].set_ylabel(ylabel, fontsize=7)
    for ax, vector in zip(row[1:], vectors):
        _image(ax, vector[0], signed=True)


def _image(ax, image: np.ndarray, signed: bool = False, stretch: bool = False) -> None:
    """signed: a diverging map centred on 0 (eigenvectors); stretch: grey from the image's own min
    to max — a bias-free model's samples are images up to gain, so contrast is not comparable."""
    if signed:
        m = float(np.abs(image).max()) or 1.0
        ax.imshow(image, cmap="RdBu_r", vmin=-m, vmax=m)
    elif stretch:
        lo, hi = float(image.min()), float(image.max())
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
    else:
        ax.imshow(np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def psnr_by_n_figure(psnr_rows: list[dict], title: str) -> bytes:
    """Output vs input PSNR, one colour per N: held-out images (solid, ±1 sd over models) and the
    model's own training images (dashed). Memorization shows as train ≫ test."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    by_n = group_rows(psnr_rows, "n")
    for colour, ((n,), rows_of_n) in zip(_colours(len(by_n)), by_n.items()):
        for images, style in (("test", "-"), ("train", "--")):
            of_images = [row for row in rows_of_n if row["images"] == images]
            x = _mean_sd(of_images, "sigma", "psnr_in")[1]
            _, mean, sd = _mean_sd(of_images, "sigma", "psnr_out")
            ax.errorbar(x, mean, yerr=sd if images == "test" else None, ls=style, marker="o", ms=3, color=colour,
                        capsize=2, label=f"N={n} {images}")
    lo, hi = ax.get_xlim()
    ax.plot([lo, hi], [lo, hi], color="grey", ls=":", label="identity")
    # Two entries per N: in the lower right they would hide the curves' high-PSNR ends, which
    # saturate below the identity line.
    return _finish(fig, ax, "input PSNR (dB)", "output PSNR (dB)", title, ncol=3, **BELOW)


def samples_by_n_figure(rows: list[tuple[int, dict[str, np.ndarray]]], seeds: np.ndarray, title: str) -> bytes:
    """One row per N; for each shown seed three images: model A, model B, A's nearest training image
    (keys "A", "B", "nearest"), each stretched to its own grey range."""
    columns = len(seeds) * 3
    fig, axes = plt.subplots(len(rows), columns, figsize=(0.9 * columns, 1.0 * len(rows) + 0.6), squeeze=False)
    for i, (n, images) in enumerate(rows):
        for j in range(len(seeds)):
            for c, (key, name) in enumerate((("A", "A"), ("B", "B"), ("nearest", "NN of A"))):
                ax = axes[i, 3 * j + c]
                _image(ax, images[key][j, 0], stretch=True)
                if i == 0:
                    ax.set_title(f"seed {int(seeds[j])}: {name}" if c == 0 else name, fontsize=7)
        axes[i, 0].set_ylabel(f"N={n}", fontsize=8)
    return _png(fig, title)


def spectra_by_n_figure(eigen_rows: list[dict], jacobian_rows: list[dict], title: str,
                        tangent_dims: int | None = None) -> bytes:
    """Jacobian eigenvalues against rank, one panel per σ, one colour per N (mean over images and
    models), each N labelled with the mean asymmetry ‖J − Jᵀ‖/‖J‖ of those Jacobians. Optionally
    marks the dimension of a known tangent space."""
    asymmetry = {key: np.mean([row["symmetry_error"] for row in group])
                 for key, group in group_rows(jacobian_rows, "sigma", "n").items()}
    by_sigma = group_rows(eigen_rows, "sigma")
    fig, axes = plt.subplots(1, len(by_sigma), figsize=(4.2 * len(by_sigma), 3.6), squeeze=False)
    for ax, ((sigma,), rows_of_sigma) in zip(axes[0], by_sigma.items()):
        by_n = group_rows(rows_of_sigma, "n")
        for colour, ((n,), rows_of_n) in zip(_colours(len(by_n)), by_n.items()):
            ranks, mean, _ = _mean_sd(rows_of_n, "k", "eigenvalue")
            ax.plot([k + 1 for k in ranks], mean, color=colour, label=f"N={n} (‖J−Jᵀ‖/‖J‖ {asymmetry[(sigma, n)]:.2f})")
        if tangent_dims:
            ax.axvline(tangent_dims, color="red", ls=":", label=f"{tangent_dims} tangent dimensions")
        ax.set_xscale("log")
        _label(ax, "rank k", "eigenvalue λ_k of (J + Jᵀ)/2", f"σ = {sigma:g}/255")
    return _png(fig, title)


def eigenvectors_ab_figure(rows: list[tuple[int, np.ndarray, np.ndarray, float, float]], clean: np.ndarray,
                           sigma: float, title: str) -> bytes:
    """Leading Jacobian eigenvectors of model A and model B at the same noisy image, one row pair per N,
    each labelled with its Jacobian's asymmetry ‖J − Jᵀ‖/‖J‖. Generalization in the basis: the two
    rows agree once N is large."""
    k = rows[0][1].shape[0]
    fig, axes = plt.subplots(2 * len(rows), k + 1, figsize=(1.0 * (k + 1), 1.0 * 2 * len(rows) + 0.5), squeeze=False)
    for i, (n, vectors_a, vectors_b, asymmetry_a, asymmetry_b) in enumerate(rows):
        for r, (name, vectors, asymmetry) in enumerate((("A", vectors_a, asymmetry_a), ("B", vectors_b, asymmetry_b))):
            _eigenvector_row(axes[2 * i + r], clean[0], vectors, f"N={n} {name}\nasym {asymmetry:.2f}", stretch=True)
    for j, ax in enumerate(axes[0, 1:]):
        ax.set_title(f"e{j + 1}", fontsize=7)
    return _png(fig, f"{title}: leading eigenvectors at σ = {sigma:g}/255 (first column: the clean image, stretched)")


def basis_overlap_figure(rows: list[dict], asymmetry: list[dict], title: str) -> bytes:
    """Mean cos² of the principal angles between A's and B's leading eigen-subspaces against N, and
    beside it the asymmetry of the Jacobians those eigenvectors come from (rows of `asymmetry`:
    n, sigma, symmetry_error per model and image)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    by_sigma = group_rows(rows, "sigma")
    colours = dict(zip([sigma for (sigma,) in by_sigma], _colours(len(by_sigma))))
    for i, ((sigma,), rows_of_sigma) in enumerate(by_sigma.items()):
        n, mean, sd = _mean_sd(rows_of_sigma, "n", "basis_overlap")
        axes[0].errorbar(n, mean, yerr=sd, marker="o", capsize=3, color=colours[sigma], label=f"σ = {sigma:g}/255")
        chance = _mean_sd(rows_of_sigma, "n", "chance")[1]  # the same for every σ: labelled once
        axes[0].plot(n, chance, color="grey", ls=":", label="chance (k/P, P pixels)" if i == 0 else None)
    for (sigma,), rows_of_sigma in group_rows(asymmetry, "sigma").items():
        n, mean, sd = _mean_sd(rows_of_sigma, "n", "symmetry_error")
        axes[1].errorbar(n, mean, yerr=sd, marker="x", capsize=3, color=colours.get(sigma), label=f"σ = {sigma:g}/255")
    axes[0].set_ylim(0, 1.02)
    axes[1].set_ylim(bottom=0)
    for ax, drawn, (ylabel, name) in zip(axes, (rows, asymmetry), [
            ("overlap of A and B eigen-subspaces", title),
            ("‖J − Jᵀ‖ / ‖J‖", "asymmetry of those Jacobians (0 for an MMSE denoiser)")]):
        _n_axis(ax, drawn)  # each panel its own N: a model is analysed before its pair is compared
        _label(ax, "training-set size N", ylabel, name)
    return _png(fig)


def slope_figure(rows: list[dict], title: str) -> bytes:
    """Fitted PSNR slope against α, with the optimal α/(α+1)."""
    fig, ax = plt.subplots(figsize=(5, 3.8))
    known = [row for row in rows if row["alpha"] is not None]
    for (architecture, n), points in group_rows(known, "architecture", "n").items():
        points = sorted(points, key=lambda row: row["alpha"])
        ax.errorbar([row["alpha"] for row in points], [row["psnr_slope"] for row in points],
                    yerr=[row["psnr_slope_std"] for row in points], marker="o", capsize=3,
                    label=f"{architecture}, N={n}: fitted slope")
    alphas = np.linspace(min(row["alpha"] for row in known) * 0.8, max(row["alpha"] for row in known) * 1.1, 100)
    ax.plot(alphas, alphas / (alphas + 1), color="black", ls="--", label="optimal α/(α+1)")
    return _finish(fig, ax, "regularity α", "slope of output vs input PSNR", title)


def disc_tangent_figure(rows: list[dict], title: str) -> bytes:
    """Against σ, one colour per N: share of the Jacobian's energy inside the 5-D tangent space,
    the trace inside it vs in total, and the count of eigenvalues above the threshold."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    by_n = group_rows(rows, "n")
    for colour, ((n,), rows_of_n) in zip(_colours(len(by_n)), by_n.items()):
        levels = [sigma for (sigma,) in group_rows(rows_of_n, "sigma")]
        mean = lambda column: _mean_sd(rows_of_n, "sigma", column)[1]  # noqa: E731
        axes[0].plot(levels, mean("energy_inside"), marker="o", color=colour, label=f"N={n}")
        axes[1].plot(levels, mean("trace_total"), marker="o", color=colour, label=f"N={n}: tr J")
        axes[1].plot(levels, mean("trace_inside"), marker="s", ls="--", color=colour, label=f"N={n}: tr inside tangent")
        axes[2].plot(levels, mean("eigenvalues_above"), marker="o", color=colour, label=f"N={n}")
    axes[0].set_ylim(0, 1.02)
    dims, threshold = rows[0]["tangent_dims"], rows[0]["eigenvalue_threshold"]
    axes[1].axhline(dims, color="red", ls=":", label=f"{dims} (projection onto the tangent space)")
    axes[2].axhline(dims, color="red", ls=":", label=f"{dims} tangent dimensions")
    labels = [("share of ‖J‖²_F inside the tangent space", "energy inside"), ("trace", "trace"),
              (f"eigenvalues above {threshold:g}", "count")]
    sigmas = sorted({row["sigma"] for row in rows})
    for ax, (name, ylabel) in zip(axes, labels):
        _measured_ticks(ax, sigmas, "g")
        _label(ax, "noise level σ (grey levels)", ylabel, name, **BELOW)
    return _png(fig, title)


def shuffle_figure(rows: list[dict], title: str) -> bytes:
    """Output vs input PSNR on the same images with and without a fixed pixel permutation."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    groups = group_rows(rows, "dataset", "architecture", "n")
    for colour, ((dataset, architecture, n), points) in zip(_colours(len(groups)), groups.items()):
        points = sorted(points, key=lambda row: row["psnr_in"])
        x = [row["psnr_in"] for row in points]
        ax.plot(x, [row["psnr_out"] for row in points], marker="o", color=colour,
                label=f"{dataset}/{architecture} N={n}")
        ax.plot(x, [row["psnr_out_shuffled"] for row in points], marker="s", ls="--", color=colour,
                label=f"{points[0]['shuffled_dataset']} (pixels shuffled)")
    lo, hi = ax.get_xlim()
    ax.plot([lo, hi], [lo, hi], color="grey", ls=":", label="identity")
    return _finish(fig, ax, "input PSNR (dB)", "output PSNR on held-out images (dB)", title, loc=LOWER_RIGHT)


def memorization_time_figure(rows: list[dict], onset: list[dict], title: str) -> bytes:
    """f_mem (95% bootstrap CI) against training step, one colour per N; and the onset step vs N,
    by both f_mem measures (a bias-free model may copy at another gain: only the scale-free one
    sees it), each with the N that never reach the level marked at the last step."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    fig.subplots_adjust(wspace=0.3)  # room for the onset panel's y label
    groups = group_rows(rows, "dataset", "architecture", "n")
    for colour, ((dataset, architecture, n), curve) in zip(_colours(len(groups)), groups.items()):
        if n < 2:  # f_mem is undefined for one training image: no curve, no legend entry
            continue
        curve = sorted(curve, key=lambda row: row["step"])
        steps = [row["step"] for row in curve]
        _errorbar_ci(axes[0], steps, curve, "f_mem", marker="o", color=colour, label=f"{dataset}/{architecture} N={n}")
        _errorbar_ci(axes[0], steps, curve, "f_mem_scale_free", marker="D", ls="--", color=colour, alpha=0.6,
                     label=f"{dataset}/{architecture} N={n}, scale-free")
    if onset:
        axes[0].axhline(onset[0]["onset_f_mem"], color="grey", ls=":", label="onset level")
    reached_any = False
    onset = [row for row in onset if row["n"] >= 2]  # f_mem, and so its onset, needs two training images
    last = max((row["step"] for row in rows), default=0)
    models = group_rows(onset, "dataset", "architecture")
    for colour, ((dataset, architecture), group) in zip(_colours(len(models)), models.items()):
        group = sorted(group, key=lambda row: row["n"])
        for key, marker, style, measure in (("onset_step", "o", "-", ""),
                                            ("onset_step_scale_free", "D", "--", ", scale-free")):
            label = f"{dataset}/{architecture}{measure}"
            reached = [row for row in group if row[key] is not None]
            reached_any |= bool(reached)
            if reached:
                axes[1].plot([row["n"] for row in reached], [row[key] for row in reached], marker=marker, ls=style,
                             color=colour, label=label)
            never = [row["n"] for row in group if row[key] is None]
            if never:  # drawn at the last step observed, marked as not reached
                axes[1].scatter(never, [last] * len(never), marker="^" if key == "onset_step" else "v",
                                facecolors="none", edgecolors="red", label=f"{label}: not reached by step {last}")
    axes[0].set_xscale("log")
    if rows:  # set, not autoscaled: with N = 1 alone f_mem is undefined (NaN) and nothing would set the steps' range
        axes[0].set_xlim(min(row["step"] for row in rows) / 1.5, last * 1.5)
    axes[0].set_ylim(-0.02, 1.02)
    # The onset's labels are long: in two columns its legend would spread under the other panel's.
    for ax, ncol, (xl, yl, name) in zip(axes, (2, 1), [("training step", "f_mem", "memorized share of samples"),
                                                       ("training-set size N", "step", "onset of memorization")]):
        _label(ax, xl, yl, name, ncol=ncol, **BELOW)
    _measured_ticks(axes[1], sorted({row["n"] for row in onset}))
    if reached_any:
        axes[1].set_yscale("log")
    return _png(fig, title)


def loss_curves_figure(curves: list[dict], title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ns = sorted({row["n"] for row in curves})
    colour = dict(zip(ns, _colours(len(ns))))
    labelled = set()
    for curve in group_rows(curves, "trial_id").values():
        n = curve[0]["n"]
        curve = sorted(curve, key=lambda row: row["step"])
        ax.plot([row["step"] for row in curve], [row["loss"] for row in curve], color=colour[n], alpha=0.8,
                label=None if n in labelled else f"N={n}")
        labelled.add(n)
    ax.set_yscale("log")
    return _finish(fig, ax, "step", "training loss", title)


def memorization_law_figure(tau_rows: list[dict], law: list[dict], title: str) -> bytes:
    """τ_mem against N on log-log axes, one panel per f_mem measure: each model's interpolated τ_mem,
    the fitted line with its exponent and 95% CI, and the slope-1 line τ ∝ N (Bonnaire et al.)
    through the same points. Models that never reach the level are drawn at their last snapshot
    (τ_mem is later), those already at it at their first snapshot there (τ_mem is earlier)."""
    measures = {"f_mem": "f_mem (raw pixels, Bonnaire et al.)", "f_mem_scale_free": "f_mem (scale-free)"}
    fig, axes = plt.subplots(1, len(measures), figsize=(11, 4.2))
    fig.subplots_adjust(wspace=0.3)
    fits = {(row["dataset"], row["architecture"], row["measure"]): row for row in law}
    groups = group_rows(tau_rows, "dataset", "architecture")
    for ax, (measure, name) in zip(axes, measures.items()):
        drawn = False
        for colour, ((dataset, architecture), units) in zip(_colours(len(groups)), groups.items()):
            units = [unit for unit in units if unit["measure"] == measure]
            timed = [unit for unit in units if not np.isnan(unit["tau"])]
            label = f"{dataset}/{architecture}"
            censored = [unit for unit in units if unit["censored"] is True]
            early = [unit for unit in units if unit["first_step"] is not None and unit["step_below"] is None]
            bounds = {"^": (censored, "last_step", "never reached: later than the last snapshot"),
                      "v": (early, "first_step", "reached by the first snapshot: earlier")}
            for marker, (bound, step, what) in bounds.items():
                if bound:
                    ax.scatter([unit["n"] for unit in bound], [unit[step] for unit in bound], marker=marker,
                               facecolors="none", edgecolors=colour, label=f"{label}: {what}")
                    drawn = True
            if not timed:
                continue
            drawn = True
            n = np.array([unit["n"] for unit in timed], dtype=float)
            tau = np.array([unit["tau"] for unit in timed], dtype=float)
            ax.scatter(n, tau, color=colour, label=f"{label}: τ_mem of a model")
            fit = fits.get((dataset, architecture, measure))
            line = np.geomspace(n.min(), n.max(), 50)
            if fit is not None and not np.isnan(fit["exponent"]):
                interval = ("no interval" if np.isnan(fit["ci_low"]) else
                            f"95% CI {fit['ci_low']:.2f} – {fit['ci_high']:.2f}, over {fit['resampled_over']}")
                ax.plot(line, np.exp(fit["intercept"]) * line ** fit["exponent"], color=colour,
                        label=f"{label}: b = {fit['exponent']:.2f} ({interval})")
            centre = np.exp(np.mean(np.log(tau)) - np.mean(np.log(n)))
            ax.plot(line, centre * line, color=colour, ls=":", label=f"{label}: slope 1, τ_mem ∝ N")
        if drawn:
            _measured_ticks(ax, sorted({unit["n"] for unit in tau_rows if unit["measure"] == measure}))
            ax.set_yscale("log")  # after the ticks, which leave no minor ticks: τ_mem's stay
            ax.legend(fontsize=7, **BELOW)
        else:  # N = 1 alone: f_mem is undefined, there is no τ to draw
            ax.text(0.5, 0.5, "no model has a defined f_mem", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("training-set size N")
        ax.set_ylabel("τ_mem (training step)")
        ax.set_title(f"τ_mem by {name}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    return _png(fig, title)
