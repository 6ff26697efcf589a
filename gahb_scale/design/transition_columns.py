"""The columns of the `transition` table, each described once: its name, what it holds, its header in
the report's table, its header and format in the table `run` prints, and whether it is an MLflow
metric of the study run. The report, the CLI, MLflow and the column table of docs/tables.md all read them
from here; summarise computes them. Listed in the report's order."""

from __future__ import annotations

import math
from dataclasses import dataclass


def number(value, digits: int = 3) -> str:
    """A number as the CLI prints it; "n/a" for a missing or undefined one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


@dataclass(frozen=True)
class TransitionColumn:
    name: str
    description: str  # what the column holds, for the README
    header: str | None = None  # in the report's table; None: left out of it
    short: str | None = None  # in the table `run` prints (its key columns); None: left out of it
    digits: int | None = None  # decimals there; None: printed as it is (names, N)
    logged: bool = False  # a metric of the study run in MLflow, per dataset/architecture, step = N

    def text(self, row: dict) -> str:
        """The cell of `row` in the table `run` prints; a column with a 95% interval shows it."""
        if self.digits is None:
            return str(row[self.name])
        if f"{self.name}_low" not in NAMES:
            return number(row[self.name], self.digits)
        if math.isnan(row[self.name]):
            return "undefined (N<2)"
        return " ".join((number(row[self.name], self.digits),
                         f"[{number(row[self.name + '_low'], self.digits)},",
                         f"{number(row[self.name + '_high'], self.digits)}]"))


_C = TransitionColumn
TRANSITION_COLUMNS = (
    _C("study_id", "the study"),
    _C("dataset", "the dataset's name", "dataset", "dataset"),
    _C("architecture", "the architecture's name", "architecture", "arch"),
    _C("n", "N, training images per model", "N", "N"),
    _C("models", "models analysed", "models"),
    _C("train_psnr", "denoised PSNR on the model's own training images (mean over models and σ)", "PSNR train",
       logged=True),
    _C("test_psnr", "denoised PSNR on held-out images (mean over models and σ)", "PSNR test", logged=True),
    _C("psnr_gap", "train minus test PSNR, dB (mean over models)", "gap dB", "gap dB", 2, logged=True),
    _C("psnr_gap_std", "its sd over models"),
    _C("psnr_gap_chance", "the same for images the model never saw, its partner's training images minus held-out "
       "images: what the gap reads without memorization", "gap chance", "chance", 2, logged=True),
    _C("f_mem", "Bonnaire et al.'s f_mem: share of samples closer to a training image than 1/3 of the distance to "
       "the second nearest (samples of every model pooled, diverged ones left out); NaN at N = 1", "f_mem",
       "f_mem [95% CI]", 2, logged=True),
    _C("f_mem_low", "f_mem's 95% bootstrap interval, lower end: two-stage, the models resampled and then each "
       "drawn model's samples (one model's samples are not independent of each other)", "f_mem low"),
    _C("f_mem_high", "upper end", "f_mem high"),
    _C("f_mem_scale_free", "f_mem with the distances taken up to gain (pooled like f_mem)", "f_mem scale-free",
       logged=True),
    _C("f_mem_scale_free_low", "its 95% bootstrap interval, lower end", "scale-free low"),
    _C("f_mem_scale_free_high", "upper end", "scale-free high"),
    _C("nn_cosine_centered", "cosine of each centred sample with its nearest centred training image (mean over "
       "models)", "NN cos centred", logged=True),
    _C("nn_cosine_centered_std", "its sd over models"),
    _C("nn_cosine_centered_chance", "nn_cosine_centered of held-out images of the data instead of samples (mean "
       "over models)", "NN cos chance", logged=True),
    _C("f_mem_chance", "f_mem of held-out images of the data against the model's training set (mean over models)",
       "f_mem chance", "chance", 2, logged=True),
    _C("f_mem_scale_free_chance", "f_mem_scale_free of held-out images (mean over models)", "f_mem scale-free chance",
       logged=True),
    _C("memorizer_distance", "distance of the denoiser to the memorizing solution, the exact blind MMSE denoiser "
       "of the model's training set (mean over models of the median over σ)", "distance to memorizer", logged=True),
    _C("memorizer_distance_bias_free", "the same, to the memorizer of the training images at every scale",
       "to bias-free memorizer", logged=True),
    _C("ab_samples", "sample seeds compared between the A and B models of the split pairs, diverged ones left "
       "out"),
    _C("ab_cosine_centered", "cosine of the centred samples of A and B drawn with the same seed (mean over samples)",
       "A/B cos centred", "A/B cos", 3, logged=True),
    _C("ab_cosine_centered_std", "its sd over samples"),
    _C("ab_cosine_centered_chance", "the same for disjoint pairs of held-out images (mean over models)",
       "A/B cos centred chance", "chance", 3, logged=True),
    _C("ab_cosine", "cosine of the samples of A and B, uncentred (mean over samples)", "A/B cos", logged=True),
    _C("ab_cosine_chance", "the same for disjoint pairs of held-out images", "A/B cos chance", logged=True),
    _C("ab_l2", "‖a − b‖/√P (P pixels) of the samples of A and B, their RMS difference on the [0, 1] scale "
       "(× 255 for grey levels; mean over samples)",
       "A/B L2", logged=True),
    _C("ab_l2_chance", "the same for disjoint pairs of held-out images", "A/B L2 chance", logged=True),
    _C("ab_basis_overlap", "mean cos² of the principal angles between the k leading Jacobian eigenvectors of A and "
       "of B at the same noisy held-out image (mean over images and pairs)", "A/B basis overlap", "A/B basis", 3,
       logged=True),
    _C("ab_basis_overlap_chance", "the overlap of random k-dimensional subspaces, k/P (P pixels)",
       "basis chance (k/P)", logged=True),
    _C("effective_dim", "tr J, the trace of the denoiser's Jacobian: its effective dimension (mean over models, "
       "and over the images and `analysis.jacobian_sigmas` of each; per σ in the `jacobian` table)",
       "tr J", logged=True),
    _C("symmetry_error", "‖J − Jᵀ‖/‖J‖ of the network's Jacobian, 0 for an MMSE denoiser at a known noise level "
       "(mean over models, images and σ, as effective_dim)", "‖J−Jᵀ‖/‖J‖", logged=True),
    _C("symmetry_error_memorizer", "the same for the blind memorizer of the model's training set", "memorizer's",
       logged=True),
    _C("symmetry_error_gaussian", "the same for the blind Gaussian MMSE denoiser of the training set", "Gaussian's",
       logged=True),
    _C("switch_n", "per dataset × architecture: √(N₁N₂), N₁ the largest N whose scale-free f_mem ≥ "
       "`analysis.onset_f_mem`, N₂ the next; null when the table does not bracket it", "switch N", "switch N", 1),
    _C("capped_samples", "samples stopped by the sampler's step cap before reaching the last σ (sum over models)",
       "capped"),
    _C("diverged_samples", "samples that diverged, left out of every sample measure (sum over models)", "diverged"),
)
NAMES = frozenset(column.name for column in TRANSITION_COLUMNS)


def report_headers() -> dict[str, str]:
    """The report's table: column name → header."""
    return {column.name: column.header for column in TRANSITION_COLUMNS if column.header is not None}


def printed_columns() -> list[TransitionColumn]:
    """The key columns `run` prints."""
    return [column for column in TRANSITION_COLUMNS if column.short is not None]


def logged_columns() -> list[str]:
    """The columns logged to MLflow."""
    return [column.name for column in TRANSITION_COLUMNS if column.logged]


def markdown_table() -> str:
    """Every column and what it holds, as a markdown table (the one in docs/tables.md)."""
    lines = ["| column | what it holds |", "|---|---|"]
    lines += [f"| `{column.name}` | {column.description} |" for column in TRANSITION_COLUMNS]
    return "\n".join(lines)
