"""Figures of a study as PNG bytes (matplotlib, no display needed)."""

from __future__ import annotations

import io
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _finish(fig, ax, xlabel: str, ylabel: str, title: str) -> bytes:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def transition_figure(rows: list[dict]) -> bytes:
    """The phase transition against N: PSNR gap, memorization, A/B similarity, effective dimension."""
    lines = defaultdict(list)
    for r in rows:
        lines[(r["dataset"], r["architecture"])].append(r)
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for (dataset, arch), rs in sorted(lines.items()):
        rs = sorted(rs, key=lambda r: r["n"])
        n = [r["n"] for r in rs]
        label = f"{dataset} / {arch}"
        col = lambda k: np.array([r[k] for r in rs], dtype=float)  # noqa: E731
        axes[0].errorbar(n, col("psnr_gap"), yerr=col("psnr_gap_std"), marker="o", capsize=3, label=label)
        axes[1].plot(n, col("nn_cosine_centered"), marker="o", label=f"{label}: centred cosine to nearest training image")
        f, lo, hi = col("f_mem"), col("f_mem_low"), col("f_mem_high")
        axes[1].errorbar(n, f, yerr=[np.nan_to_num(f - lo), np.nan_to_num(hi - f)], marker="s", ls="--", capsize=3,
                         label=f"{label}: f_mem (95% CI)")
        axes[2].errorbar(n, col("ab_cosine_centered"), yerr=col("ab_cosine_centered_std"), marker="o", capsize=3,
                         label=f"{label}: centred cosine")
        axes[2].plot(n, col("ab_cosine"), marker="^", ls=":", label=f"{label}: raw cosine")
        axes[2].plot(n, col("ab_basis_overlap"), marker="s", ls="--", label=f"{label}: Jacobian eigenbasis overlap")
        axes[3].plot(n, col("effective_dim"), marker="o", label=label)
    titles = ["train − test PSNR (dB)", "memorization", "model A vs model B",
              "effective dimension tr J"]
    for ax, title in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_xlabel("training-set size N")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


def psnr_figure(psnr_rows: list[dict], title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(4.5, 3.8))
    for images in ("train", "test"):
        rs = sorted((r for r in psnr_rows if r["images"] == images), key=lambda r: r["psnr_in"])
        ax.plot([r["psnr_in"] for r in rs], [r["psnr_out"] for r in rs], marker="o", label=f"{images} images")
    lo = min(r["psnr_in"] for r in psnr_rows)
    hi = max(r["psnr_in"] for r in psnr_rows)
    ax.plot([lo, hi], [lo, hi], color="grey", ls=":", label="identity")
    return _finish(fig, ax, "input PSNR (dB)", "output PSNR (dB)", title)


def sample_grid_figure(columns: dict[str, np.ndarray], seeds: np.ndarray, title: str) -> bytes:
    """Images side by side per seed, e.g. {"model A": ..., "model B": ..., "nearest training image": ...}."""
    rows = len(seeds)
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.6 * rows), squeeze=False)
    for j, (name, images) in enumerate(columns.items()):
        for i in range(rows):
            ax = axes[i, j]
            ax.imshow(np.clip(images[i, 0], 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"seed {int(seeds[i])}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def spectrum_figure(eigen_rows: list[dict], title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(4.5, 3.8))
    curves = defaultdict(list)
    for r in eigen_rows:
        curves[(r["sigma"], r["image"])].append((r["k"], r["eigenvalue"]))
    for (sigma, image), points in sorted(curves.items()):
        points.sort()
        ax.plot([k + 1 for k, _ in points], [v for _, v in points], label=f"σ={sigma:g}/255, image {image}")
    ax.set_xscale("log")
    return _finish(fig, ax, "k", "eigenvalue λ_k of the Jacobian", title)


def eigenvector_figure(eigenvectors: np.ndarray, sigmas: np.ndarray, inputs: np.ndarray, title: str) -> bytes:
    """Rows: (σ, image); columns: the noisy-image's clean version, then the leading eigenvectors."""
    n_sigma, n_images, k = eigenvectors.shape[:3]
    fig, axes = plt.subplots(n_sigma * n_images, k + 1, figsize=(1.3 * (k + 1), 1.3 * n_sigma * n_images),
                             squeeze=False)
    for s in range(n_sigma):
        for i in range(n_images):
            row = axes[s * n_images + i]
            row[0].imshow(inputs[i, 0], cmap="gray", vmin=0, vmax=1)
            row[0].set_ylabel(f"σ={sigmas[s]:g}", fontsize=7)
            for j in range(k):
                v = eigenvectors[s, i, j, 0]
                m = np.abs(v).max() or 1.0
                row[j + 1].imshow(v, cmap="RdBu_r", vmin=-m, vmax=m)
            for ax in row:
                ax.set_xticks([])
                ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    return _png(fig)
