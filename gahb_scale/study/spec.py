"""The study spec: pydantic models of the YAML file, its expansion into trials, stable trial ids.

A study is a grid: every dataset × architecture × training-set size N × split pair × seed, and for
each, two models trained on the disjoint halves A and B of the split pair. `load_spec` reads and
validates a YAML file (every error at once, each naming its field); `expand_trials` turns the spec
into the list of `Trial`s; `describe_trials` renders that grid for `gahb-scale validate`.

Trial ids. A trial's id is a hash of exactly what determines the trained network: the dataset
spec (minus its cache folder), the architecture spec (hyper-parameters with defaults filled in),
image size, N, split pair, split, seed, number of held-out images and the training spec (minus
the logging and checkpoint cadence). The study name, sampling, analysis, resources and storage
are left out, so a re-run with other analysis settings, or the same trial in another study,
finds and reuses the trained model.

This module is imported by `gahb-scale validate`: it must not import Ray or MLflow. It imports
torch (through `gahb_scale.models`) only when an architecture is validated, because the
architecture's hyper-parameters are checked by building the network.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import json
import math
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from .. import __version__
from ..errors import UserInputError
from ..training_config import TrainConfig

__all__ = [
    "DATASET_KINDS",
    "DATASET_PARAMS",
    "AnalysisSpec",
    "ArchitectureSpec",
    "CalphaParams",
    "DatasetSpec",
    "DiscsParams",
    "FolderParams",
    "PhotosParams",
    "ResourceSpec",
    "SamplingSpec",
    "SpecError",
    "StorageSpec",
    "StudySpec",
    "Trial",
    "TrainingSpec",
    "analysis_id",
    "describe_trials",
    "expand_trials",
    "load_spec",
    "parse_spec",
    "trial_identity",
]

# Bump when the meaning of a hashed field changes, so old trained models are not reused by mistake.
# 2: the A and B models of a pair are independent (own weights and streams); discs by the authors' recipe.
TRIAL_ID_VERSION = 2
# Fields that are part of the spec but do not change the trained network: left out of trial ids.
_TRAINING_NOT_IN_ID = frozenset({"log_every", "checkpoint_every"})
_DATASET_PARAMS_NOT_IN_ID = frozenset({"cache_dir"})
# Constructor arguments of the architectures that the study fixes (images are greyscale).
_FIXED_ARCH_PARAMS = {"channels": "images are greyscale, so the channel count is fixed to 1"}

AUTHORS_EPOCHS, AUTHORS_EPOCH_IMAGES = 1000, 250_000  # the authors' training budget (see TrainingSpec.budget)

_STUDY_NAME = r"^[A-Za-z0-9_-]+$"
_LABEL = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # dataset / architecture names (used in tables and paths)
_PATTERN_WORDS = {
    _STUDY_NAME: "use only letters, digits, '_' and '-' (it names files and runs)",
    _LABEL: "use only letters, digits, '_', '-' and '.', starting with a letter or digit",
}


# --------------------------------------------------------------------------------------------
# helpers for precise errors


def _fail(errors: list[tuple[tuple[str | int, ...], str]], value: Any = None) -> typing.NoReturn:
    """Raise a pydantic ValidationError with our own messages at the given (relative) locations.

    Raised inside a validator, pydantic prefixes each location with the field or model path.
    """
    raise ValidationError.from_exception_data(
        "StudySpec",
        [InitErrorDetails(type=PydanticCustomError("spec", "{detail}", {"detail": msg}), loc=loc, input=value)
         for loc, msg in errors],
    )


def _suggest(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _message(err: dict, known: list[str] | None = None) -> str:
    """A readable message for one pydantic error dict (without its location)."""
    kind, msg = err["type"], err["msg"]
    if kind == "spec":
        return msg
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") in _PATTERN_WORDS:
        return f"{_PATTERN_WORDS[err['ctx']['pattern']]} (got {_short(err.get('input'))})"
    if kind == "extra_forbidden":
        name = err["loc"][-1] if err["loc"] else "?"
        if known is None:
            return "unknown field"
        return f"unknown field{_suggest(name, known)}; allowed: {', '.join(known)}"
    if msg.startswith("Value error, "):  # a ValueError raised by one of our validators
        return msg[len("Value error, "):]
    if msg.startswith("Assertion failed, "):
        return msg[len("Assertion failed, "):]
    return f"{msg} (got {_short(err.get('input'))})"


def _validate_params(model: type[BaseModel], params: dict, what: str,
                     fixed: dict[str, str] | None = None) -> dict:
    """Validate kind-specific params with `model`; return them normalised, defaults filled in."""
    try:
        return model.model_validate(params).model_dump(mode="json")
    except ValidationError as exc:
        known = list(model.model_fields)
        errors = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            name = loc[0] if loc else "?"
            if err["type"] == "extra_forbidden" and fixed and name in fixed:
                msg = f"cannot be set: {fixed[name]}"
            elif err["type"] == "extra_forbidden":
                allowed = ", ".join(known) if known else "none"
                msg = f"unknown parameter of {what}{_suggest(name, known)}; allowed: {allowed}"
            elif err["type"] == "missing":
                msg = f"required parameter of {what} is missing"
            else:
                msg = _message(err)
            errors.append((loc, msg))
        _fail(errors, params)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _none_to_empty(v: Any) -> Any:
    return {} if v is None else v


# --------------------------------------------------------------------------------------------
# datasets


class CalphaParams(_Model):
    """C^α images: a C^α boundary between two C^β-regular backgrounds."""
    alpha: float = Field(gt=0, description="regularity of the boundary curve")
    beta: float | None = Field(default=None, ge=0, description="regularity of the backgrounds; None: = alpha")


class DiscsParams(_Model):
    """Random discs by the authors' recipe (5 parameters: centre x, y, radius, foreground and background grey)."""
    antialiasing: int = Field(default=2, ge=0, le=4, description="draw on a 2**antialiasing times finer grid, then "
                                                                 "low-pass and halve that many times (db2 wavelet)")


class FolderParams(_Model):
    """Real images from a folder the user already has (CelebA, LSUN, ...), prepared by the authors'
    recipe: crop, bicubic RGB resize, grey = channel mean, near-duplicates removed before the split."""
    path: str = Field(description="image folder; relative paths resolve against the current directory")
    crop: Literal["celeba", "center", "top_left"] = Field(
        default="center", description="celeba: the authors' im[29:-29, 9:-9]; top_left: their LSUN square")
    near_duplicate_threshold: float | None = Field(
        default=0.95, gt=0, lt=1, description="drop the later of two images whose mean-removed correlation on "
                                              "copies pooled by int(side/20) exceeds this (the authors' 0.95); "
                                              "null keeps duplicates")
    cache_dir: str | None = Field(default=None, description="where the prepared images are cached; "
                                                            "default <results_dir>/datasets")

    @field_validator("path")
    @classmethod
    def _existing_folder(cls, v: str) -> str:
        p = Path(v).expanduser()
        if not p.exists():
            raise ValueError(f"folder {v!r} does not exist (relative paths resolve against the current directory)")
        if not p.is_dir():
            raise ValueError(f"{v!r} is not a directory")
        return str(p.resolve())  # workers run in other directories: keep the absolute path

    @field_validator("cache_dir")
    @classmethod
    def _absolute_cache(cls, v: str | None) -> str | None:
        if v is None or "://" in v:
            return v
        return str(Path(v).expanduser().resolve())


class PhotosParams(_Model):
    """The real photographs bundled with scikit-image (the embedded default, works offline)."""


DATASET_PARAMS: dict[str, type[_Model]] = {
    "calpha": CalphaParams,
    "discs": DiscsParams,
    "folder": FolderParams,
    "photos": PhotosParams,
}
DatasetKind = Literal["calpha", "discs", "folder", "photos"]
DATASET_KINDS: tuple[str, ...] = typing.get_args(DatasetKind)


class DatasetSpec(_Model):
    """One image distribution. `params` is validated per kind and stored with defaults filled in,
    so `gahb_scale.data` can be called as `make(kind, **params)`."""
    name: str = Field(pattern=_LABEL, description="label used in tables and figures")
    kind: DatasetKind
    params: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    pixel_shuffle_seed: int | None = Field(
        default=None, ge=0, description="apply one fixed random pixel permutation drawn from this seed")

    @field_validator("params", mode="before")
    @classmethod
    def _params_none(cls, v: Any) -> Any:
        return _none_to_empty(v)

    @field_validator("params")
    @classmethod
    def _params_of_kind(cls, v: dict, info: ValidationInfo) -> dict:
        kind = info.data.get("kind")
        if kind is None:  # the kind itself is invalid and reported there
            return v
        return _validate_params(DATASET_PARAMS[kind], v, f"dataset kind {kind!r}")


# --------------------------------------------------------------------------------------------
# architectures


def _architectures() -> dict[str, type]:
    from ..models import ARCHITECTURES  # lazy: imports torch
    return ARCHITECTURES


@lru_cache(maxsize=None)
def _arch_params_model(kind: str) -> type[BaseModel]:
    """A pydantic model of the constructor keywords of an architecture (types from its annotations)."""
    cls = _architectures()[kind]
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotation: fall back to Any
        hints = {}
    fields: dict[str, Any] = {}
    extra = "forbid"
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind is p.VAR_KEYWORD:
            extra = "allow"
            continue
        if p.kind is p.VAR_POSITIONAL or p.name in _FIXED_ARCH_PARAMS:
            continue
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (hints.get(p.name, Any), default)
    return create_model(f"{cls.__name__}Params", __config__=ConfigDict(extra=extra, frozen=True,
                                                                       allow_inf_nan=False), **fields)


class ArchitectureSpec(_Model):
    """One network: a key of `gahb_scale.models.ARCHITECTURES` and its constructor hyper-parameters.

    Validation builds the network once on the CPU, so any hyper-parameter the constructor rejects
    is a spec error; `params` is stored with the constructor's defaults filled in.
    """
    name: str = Field(pattern=_LABEL, description="label used in tables and figures")
    kind: str
    params: dict[str, Any] = Field(default_factory=dict, validate_default=True)

    _size_multiple: int = PrivateAttr(default=1)
    _num_parameters: int = PrivateAttr(default=0)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        known = _architectures()
        if v not in known:
            raise ValueError(f"unknown architecture kind {v!r}{_suggest(v, known)}; known: {', '.join(sorted(known))}")
        return v

    @field_validator("params", mode="before")
    @classmethod
    def _params_none(cls, v: Any) -> Any:
        return _none_to_empty(v)

    @field_validator("params")
    @classmethod
    def _params_of_kind(cls, v: dict, info: ValidationInfo) -> dict:
        kind = info.data.get("kind")
        if kind is None:
            return v
        return _validate_params(_arch_params_model(kind), v, f"architecture kind {kind!r}", _FIXED_ARCH_PARAMS)

    @model_validator(mode="after")
    def _buildable(self) -> ArchitectureSpec:
        from ..models import build_model, count_parameters
        try:
            net = build_model(self.kind, **self.params)
        except Exception as exc:  # noqa: BLE001 - any constructor failure is the user's params
            _fail([(("params",), f"cannot build {self.kind!r} with these parameters: {exc}")], self.params)
        self._size_multiple = int(getattr(net, "size_multiple", 1))
        self._num_parameters = int(count_parameters(net))
        return self

    @property
    def size_multiple(self) -> int:
        """Image sizes must be a multiple of this (2**blocks for the UNet)."""
        return self._size_multiple

    @property
    def num_parameters(self) -> int:
        return self._num_parameters


# --------------------------------------------------------------------------------------------
# training, sampling, analysis, resources, storage


_TRAIN = TrainConfig()  # every training default lives in the core's TrainConfig
_TRAIN_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig)) - {"seed"}


class TrainingSpec(_Model):
    """One blind-denoiser training run: a fixed number of Adam steps, the same for every N. The
    fields of `TrainConfig` (and its defaults), minus the seed, which each model draws."""
    steps: int = Field(default=_TRAIN.steps, ge=1, description="gradient steps, independent of N")
    batch_size: int = Field(default=_TRAIN.batch_size, ge=1, description="global batch (split evenly over the workers)")
    lr: float = Field(default=_TRAIN.lr, gt=0)
    lr_halve_every: int = Field(default=_TRAIN.lr_halve_every, ge=1, description="Adam lr halved every this many steps")
    noise_range: tuple[float, float] = Field(default=_TRAIN.noise_range, description="sigma range, grey levels /255")
    noise_schedule: Literal["quadratic", "linear"] = _TRAIN.noise_schedule
    precision: Literal["fp32", "bf16"] = Field(default=_TRAIN.precision, description="bf16 autocast is used only on CUDA")
    checkpoint_every: int = Field(default=_TRAIN.checkpoint_every, ge=1)
    log_every: int = Field(default=_TRAIN.log_every, ge=1)
    workers: int = Field(default=1, ge=1, validate_default=True, description="Ray Train workers per trial (> 1: DDP)")
    snapshot_steps: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list, description="steps whose weights are kept, for memorization over training time")
    shared_init: bool = Field(default=False, description="ablation: models A and B of a pair start from the same "
                                                         "weights and share sigma draws, noise and batch order")

    def config(self, seed: int) -> TrainConfig:
        """The core's configuration of one model's training, seeded by that model's training seed."""
        return TrainConfig(seed=seed, **self.model_dump(include=_TRAIN_CONFIG_FIELDS))

    def budget(self) -> str:
        """The training budget in the authors' units: their default is 1000 epochs of 250,000 tiled
        images at batch 512 (488,282 steps), the learning rate halved every 100 epochs."""
        images = self.steps * self.batch_size
        return (f"{self.steps:,} steps of batch {self.batch_size} = {images / 1e6:.3g}M images per model = "
                f"{images / AUTHORS_EPOCH_IMAGES:.4g} epochs of {AUTHORS_EPOCH_IMAGES:,} "
                f"({100 * images / (AUTHORS_EPOCHS * AUTHORS_EPOCH_IMAGES):.3g}% of the authors' {AUTHORS_EPOCHS} epochs); "
                f"lr halved every {self.lr_halve_every * self.batch_size / AUTHORS_EPOCH_IMAGES:.3g} epochs "
                f"(the authors: every 100)")

    @field_validator("noise_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] < 0 or v[0] >= v[1]:
            raise ValueError(f"needs 0 <= low < high (got [{v[0]:g}, {v[1]:g}])")
        return v

    @field_validator("workers")
    @classmethod
    def _splits_batch(cls, v: int, info: ValidationInfo) -> int:
        batch = info.data.get("batch_size")
        if batch is not None and batch % v:
            raise ValueError(f"training.batch_size = {batch} cannot be split evenly over {v} workers")
        return v

    @field_validator("snapshot_steps")
    @classmethod
    def _within_training(cls, v: list[int], info: ValidationInfo) -> list[int]:
        steps = info.data.get("steps")
        late = [s for s in v if steps is not None and s > steps]
        if late:
            raise ValueError(f"steps {late} are after the end of training (training.steps = {steps})")
        return _unique_ints(v, "snapshot step")


class SamplingSpec(_Model):
    """The Kadkhodaie–Simoncelli sampler (stochastic coarse-to-fine gradient ascent)."""
    num_samples: int = Field(default=16, ge=1)
    seed: int = Field(default=0, ge=0, description="sample i of every model uses seed + i (shared by A and B)")
    beta: float = Field(default=1.0, gt=0, le=1, description="1: deterministic; < 1 injects noise")
    h0: float = Field(default=0.01, gt=0, le=1)
    sigma_0: float = Field(default=1.0, gt=0)
    sigma_L: float = Field(default=0.01, gt=0, validate_default=True)
    mean: float = Field(default=0.5, ge=0, le=1, description="grey level of the initial image")
    max_steps: int = Field(default=5000, ge=1, description="step cap (hitting it is reported)")

    @field_validator("sigma_L")
    @classmethod
    def _below_sigma_0(cls, v: float, info: ValidationInfo) -> float:
        sigma_0 = info.data.get("sigma_0")
        if sigma_0 is not None and v >= sigma_0:
            raise ValueError(f"must be smaller than sigma_0 = {sigma_0:g} (got {v:g})")
        return v


def _default_sigmas() -> list[float]:
    """8 log-spaced noise levels from 1 to 255 (grey levels), 4 significant digits."""
    return [float(f"{255 ** (i / 7):.4g}") for i in range(8)]


def _sigma_grid(values: list[float]) -> list[float]:
    errors = []
    for i, s in enumerate(values):
        if not 0 < s <= 255:
            errors.append(((i,), f"noise levels are grey levels in (0, 255] (got {s:g})"))
    seen: dict[float, int] = {}
    for i, s in enumerate(values):
        if s in seen:
            errors.append(((i,), f"duplicate noise level {s:g} (also at [{seen[s]}])"))
        seen.setdefault(s, i)
    if errors:
        _fail(errors, values)
    return sorted(values)


class AnalysisSpec(_Model):
    """Per-model and per-pair measurements."""
    sigmas: list[float] = Field(default_factory=_default_sigmas, min_length=1,
                                description="PSNR-curve noise levels, grey levels /255")
    psnr_images: int = Field(default=64, ge=1, description="train and test images per PSNR curve (at most)")
    jacobian_images: int = Field(default=2, ge=1, description="noisy images per model for the Jacobian")
    jacobian_sigmas: list[float] = Field(default_factory=lambda: [5.0, 25.0, 100.0], min_length=1)
    eigenvalues_kept: int = Field(default=64, ge=1, description="at most; capped at the number of pixels")
    eigenvector_images: int = Field(default=8, ge=0, validate_default=True,
                                    description="leading eigenvectors saved as images")
    memorization_threshold: float = Field(default=1 / 3, gt=0, lt=1, description="d1/d2 below this: memorized")
    onset_f_mem: float = Field(default=0.5, gt=0, le=1, description="memorization has set in once f_mem reaches this "
                                                                     "(over training.snapshot_steps)")
    slope_sigma_range: tuple[float, float] = Field(default=(0.0, 255.0), validate_default=True,
                                                   description="noise levels (grey levels) the PSNR slope is fitted on")
    eigenvalue_threshold: float = Field(default=0.5, gt=0, description="Jacobian eigenvalues above this are counted "
                                                                        "against the disc family's 5 tangent dimensions")
    bootstrap: int = Field(default=1000, ge=1, description="bootstrap resamples for f_mem intervals")

    @field_validator("sigmas", "jacobian_sigmas")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        return _sigma_grid(v)

    @field_validator("slope_sigma_range")
    @classmethod
    def _two_sigmas_in_range(cls, v: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        sigmas = info.data.get("sigmas")
        if v[0] > v[1]:
            raise ValueError(f"needs low <= high (got [{v[0]:g}, {v[1]:g}])")
        if sigmas is not None and sum(v[0] <= s <= v[1] for s in sigmas) < 2:
            raise ValueError(f"[{v[0]:g}, {v[1]:g}] holds fewer than two of analysis.sigmas {sigmas}: "
                             f"a slope needs two noise levels")
        return v

    @field_validator("eigenvector_images")
    @classmethod
    def _at_most_kept(cls, v: int, info: ValidationInfo) -> int:
        kept = info.data.get("eigenvalues_kept")
        if kept is not None and v > kept:
            raise ValueError(f"cannot exceed eigenvalues_kept = {kept} (got {v})")
        return v


class ResourceSpec(_Model):
    """Ray resources. cpus/gpus are for one training worker (each, when workers > 1); a worker trains
    one pack of models at a time (`models_per_pack`), and `*_trial` means one such Ray Train run."""
    cpus_per_trial: float = Field(default=1.0, gt=0)
    gpus_per_trial: float = Field(default=0.0, ge=0, description="fractional only below 1 (a share of one GPU)")
    max_concurrent_trials: int = Field(default=1, ge=1)
    models_per_pack: int | None = Field(
        default=None, ge=1, description="models of one architecture (any dataset) trained together in one worker "
                                        "(1: one model per trial); None: small models packed, no more packs than "
                                        "run side by side, a pack's step at most the paper UNet's at 80x80")
    max_failures: int = Field(default=3, ge=0, description="restarts after a worker or node dies: a trial from its "
                                                           "last checkpoint, an analysis task from the start")

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_or_share(cls, v: float) -> float:
        if v > 1 and not float(v).is_integer():
            raise ValueError(f"fractional GPUs are only possible below 1 (a share of one GPU); "
                             f"use a whole number of GPUs (got {v:g})")
        return v


class StorageSpec(_Model):
    """Where results go. `results_dir` is a local path (relative: against the current directory)
    or a URI such as s3://bucket/prefix; default results/<study name>."""
    results_dir: str | None = Field(default=None, min_length=1)
    mlflow_tracking_uri: str | None = Field(
        default=None, description="a tracking server (http://...) or store URI; None: MLFLOW_TRACKING_URI, else an "
                                  "sqlite store under a local results_dir (remote results: ~/.gahb-scale/mlflow)")

    def results_location(self) -> str:
        """`results_dir` as an absolute path, or the URI unchanged (call on the driver)."""
        if self.results_dir is None:
            raise UserInputError("storage.results_dir is not set")
        if "://" in self.results_dir:
            return self.results_dir
        return str(Path(self.results_dir).expanduser().resolve())


# --------------------------------------------------------------------------------------------
# the study


def _unique_names(items: list, what: str) -> list:
    seen: dict[str, int] = {}
    errors = []
    for i, item in enumerate(items):
        if item.name in seen:
            errors.append(((i, "name"), f"duplicate {what} name {item.name!r} (also at [{seen[item.name]}])"))
        seen.setdefault(item.name, i)
    if errors:
        _fail(errors, [it.name for it in items])
    return items


def _unique_ints(values: list[int], what: str) -> list[int]:
    seen: dict[int, int] = {}
    errors = []
    for i, v in enumerate(values):
        if v in seen:
            errors.append(((i,), f"duplicate {what} {v} (also at [{seen[v]}])"))
        seen.setdefault(v, i)
    if errors:
        _fail(errors, values)
    return sorted(values)


class StudySpec(_Model):
    """A whole study. Fields are declared in validation order: `image_size` after `architectures`
    (it is checked against them) and `resources` after `training`."""
    name: str = Field(pattern=_STUDY_NAME, description="the study id")
    description: str = ""
    datasets: list[DatasetSpec] = Field(min_length=1)
    architectures: list[ArchitectureSpec] = Field(min_length=1)
    image_size: int = Field(ge=4, description="images are image_size x image_size, greyscale")
    train_sizes: list[Annotated[int, Field(ge=1)]] = Field(min_length=1, description="N; sorted ascending")
    split_pairs: int = Field(default=1, ge=1, description="disjoint split pairs; pair p uses data seed p")
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0], min_length=1,
                                                     description="training seeds (init + batch order)")
    test_images: int = Field(default=64, ge=1, description="held-out images, disjoint from every split")
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec, validate_default=True)

    @field_validator("datasets")
    @classmethod
    def _unique_datasets(cls, v: list[DatasetSpec]) -> list[DatasetSpec]:
        return _unique_names(v, "dataset")

    @field_validator("architectures")
    @classmethod
    def _unique_architectures(cls, v: list[ArchitectureSpec]) -> list[ArchitectureSpec]:
        return _unique_names(v, "architecture")

    @field_validator("image_size")
    @classmethod
    def _fits_architectures(cls, v: int, info: ValidationInfo) -> int:
        bad = [a for a in info.data.get("architectures") or [] if v % a.size_multiple]
        if bad:
            lcm = math.lcm(*(a.size_multiple for a in info.data["architectures"]))
            need = "; ".join(f"architecture {a.name!r} ({a.kind}) needs a multiple of {a.size_multiple}" for a in bad)
            lo, hi = (v // lcm) * lcm, (v // lcm + 1) * lcm
            near = f"{lo} or {hi}" if lo >= 4 else f"{hi}"
            raise ValueError(f"{v} does not fit: {need} (e.g. {near})")
        discs = [d.name for d in info.data.get("datasets") or [] if d.kind == "discs"]
        if discs:
            from ..data.discs import MIN_IMAGE_SIZE  # lazy: imports torch
            if v < MIN_IMAGE_SIZE:
                raise ValueError(f"discs (dataset {discs[0]!r}) need image_size >= {MIN_IMAGE_SIZE}: their radius is "
                                 f"drawn from [3, (size - 3) / 2) pixels (got {v})")
        return v

    @field_validator("train_sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        return _unique_ints(v, "train size")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        return _unique_ints(v, "seed")

    @field_validator("resources")
    @classmethod
    def _resources_fit_training(cls, v: ResourceSpec, info: ValidationInfo) -> ResourceSpec:
        training = info.data.get("training")
        if training is not None and training.workers > 1 and 0 < v.gpus_per_trial < 1:
            _fail([(("gpus_per_trial",), f"DDP with training.workers = {training.workers} needs a whole GPU per "
                                         f"worker, not a share (got {v.gpus_per_trial:g})")], v.gpus_per_trial)
        return v

    @field_validator("storage")
    @classmethod
    def _default_results_dir(cls, v: StorageSpec, info: ValidationInfo) -> StorageSpec:
        name = info.data.get("name")
        if v.results_dir is None and name is not None:
            v = v.model_copy(update={"results_dir": f"results/{name}"})
        return v

    @model_validator(mode="after")
    def _default_folder_cache(self) -> StudySpec:
        """A folder is prepared once per study, before training, and every task reads that copy by
        file offset: by default it is cached with the results. Remote results cannot hold a file read
        that way, so there the cache must be a folder every node can read."""
        if "://" in (self.storage.results_dir or ""):
            errors = [(("datasets", i, "params", "cache_dir"),
                       f"results are remote ({self.storage.results_dir}), so set cache_dir to a folder every node "
                       f"can read (e.g. beside the images on the shared volume)")
                      for i, d in enumerate(self.datasets) if d.kind == "folder" and d.params.get("cache_dir") is None]
            if errors:
                _fail(errors)
            return self
        cache = str(Path(self.storage.results_location()) / "datasets")
        datasets = [d.model_copy(update={"params": {**d.params, "cache_dir": cache}})
                    if d.kind == "folder" and d.params.get("cache_dir") is None else d for d in self.datasets]
        object.__setattr__(self, "datasets", datasets)  # frozen model: filled in once, at validation
        return self


# --------------------------------------------------------------------------------------------
# errors and loading


def _loc_str(loc: typing.Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _unwrap(ann: Any) -> Any:
    """list[X] / X | None / Annotated[X, ...] -> X."""
    while True:
        origin = typing.get_origin(ann)
        if origin in (list, tuple, Union, types.UnionType, Annotated):
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            if not args:
                return None
            ann = args[0]
        else:
            return ann


def _known_fields(parent: tuple) -> list[str] | None:
    """Field names of the model found at location `parent` inside a StudySpec (None if not a model)."""
    cls: Any = StudySpec
    for part in parent:
        if isinstance(part, int):
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return None
        cls = _unwrap(cls.model_fields[part].annotation)
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return list(cls.model_fields)
    return None


class SpecError(UserInputError):
    """An invalid study spec. `errors` holds (field path, message) pairs; the message names the
    source file and lists every error, one per line, as `<field path>: <message>`."""

    def __init__(self, source: str, errors: list[tuple[str, str]] | None = None, problem: str | None = None):
        self.source = source
        self.errors = list(errors or [])
        if problem is not None:
            text = f"{source}: {problem}"
        else:
            n = len(self.errors)
            lines = [f"{source}: {n} error{'s' if n != 1 else ''} in the study spec:"]
            lines += [f"  {path}: {msg}" for path, msg in self.errors]
            text = "\n".join(lines)
        super().__init__(text)

    @classmethod
    def from_validation(cls, exc: ValidationError, source: str) -> SpecError:
        errors = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            known = _known_fields(loc[:-1]) if err["type"] == "extra_forbidden" else None
            errors.append((_loc_str(loc), _message(err, known)))
        return cls(source, errors)


def parse_spec(data: Any, source: str = "<spec>") -> StudySpec:
    """Validate an already-parsed spec (a mapping); raise SpecError listing every problem."""
    if not isinstance(data, dict):
        got = "an empty document" if data is None else f"a {type(data).__name__}"
        raise SpecError(source, problem=f"the top level must be a mapping of spec fields (name, image_size, "
                                        f"datasets, ...), got {got}")
    try:
        return StudySpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError.from_validation(exc, source) from None


class _StrictLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        except TypeError:  # unhashable key: let the normal constructor report it
            pass
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_spec(path: str | Path, results_dir: str | None = None) -> StudySpec:
    """Read and validate a study spec YAML file; raise SpecError (naming the file) on any problem.
    `results_dir` replaces the spec's `storage.results_dir` (the CLI's --results) before validation,
    so defaults that depend on it follow it."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise SpecError(source, problem="no such study spec file")
    if not path.is_file():
        raise SpecError(source, problem="not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(source, problem=f"cannot read: {exc}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise SpecError(source, problem=f"not valid YAML at {where}: {what}") from None
    except yaml.YAMLError as exc:
        raise SpecError(source, problem=f"not valid YAML: {exc}") from None
    if results_dir is not None and isinstance(data, dict) and isinstance(data.get("storage") or {}, dict):
        data["storage"] = {**(data.get("storage") or {}), "results_dir": results_dir}
    return parse_spec(data, source)


# --------------------------------------------------------------------------------------------
# trials


@dataclass(frozen=True)
class Trial:
    """One model to train: `dataset` × `architecture` × N × split pair × split × seed."""
    study: str
    dataset: DatasetSpec = field(hash=False)
    architecture: ArchitectureSpec = field(hash=False)
    n: int
    pair: int
    split: Literal["A", "B"]
    seed: int
    trial_id: str
    pair_id: str  # shared by the A and B trial of one split pair

    @property
    def group_key(self) -> tuple[str, str, int]:
        """(dataset name, architecture name, N): one row of the transition table."""
        return (self.dataset.name, self.architecture.name, self.n)

    @property
    def data_seed(self) -> int:
        """Seed of the data split: split pair p draws its disjoint subsets with seed p."""
        return self.pair

    def training_seed(self, shared_init: bool = False) -> int:
        """Seed of this model's initial weights and of its training streams (σ draws, noise, batch order).

        The paper trains the two models of a pair as independent networks, so the seed is drawn
        from (seed, split): a study with seeds [0, 1] has four unrelated models per N. With
        `shared_init` (an ablation) both splits use `seed` itself and differ only in their data.
        """
        if shared_init:
            return self.seed
        return int(np.random.SeedSequence([self.seed, "AB".index(self.split)]).generate_state(1)[0])

    def as_row(self) -> dict[str, Any]:
        """Flat description for tables (no nested specs)."""
        return {
            "study_id": self.study, "trial_id": self.trial_id, "pair_id": self.pair_id,
            "dataset": self.dataset.name, "dataset_kind": self.dataset.kind,
            "architecture": self.architecture.name, "architecture_kind": self.architecture.kind,
            "n": self.n, "pair": self.pair, "split": self.split, "seed": self.seed,
        }


def trial_identity(spec: StudySpec, dataset: DatasetSpec, architecture: ArchitectureSpec, n: int, pair: int,
                   split: str | None, seed: int) -> dict[str, Any]:
    """The canonical content hashed into a trial id (`split=None`: into the pair id).

    Worth saving next to a checkpoint: it says exactly which settings produced it.
    """
    ds = dataset.model_dump(mode="json")
    ds["params"] = {k: v for k, v in ds["params"].items() if k not in _DATASET_PARAMS_NOT_IN_ID}
    identity = {
        "id_version": TRIAL_ID_VERSION,
        "dataset": ds,
        "architecture": architecture.model_dump(mode="json"),
        "image_size": spec.image_size,
        "n": n,
        "pair": pair,
        "seed": seed,
        "test_images": spec.test_images,
        "training": spec.training.model_dump(mode="json", exclude=set(_TRAINING_NOT_IN_ID)),
    }
    if split is not None:
        identity["split"] = split
    return identity


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def expand_trials(spec: StudySpec) -> list[Trial]:
    """All trials, ordered by dataset, architecture, N, pair, seed, split (A before B)."""
    trials = []
    for ds in spec.datasets:
        for arch in spec.architectures:
            for n in spec.train_sizes:
                for pair in range(spec.split_pairs):
                    for seed in spec.seeds:
                        pair_id = _digest(trial_identity(spec, ds, arch, n, pair, None, seed))
                        for split in ("A", "B"):
                            trial_id = _digest(trial_identity(spec, ds, arch, n, pair, split, seed))
                            trials.append(Trial(spec.name, ds, arch, n, pair, split, seed, trial_id, pair_id))
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):  # only reachable through a hash collision
        raise SpecError(spec.name, problem="two trials share a trial id (hash collision); rename a dataset")
    return trials


def analysis_id(spec: StudySpec) -> str:
    """Hash of the sampling and analysis settings and of the package version (a release may
    change what is measured): analysed rows are valid for these only."""
    settings = {"sampling": spec.sampling.model_dump(mode="json"), "analysis": spec.analysis.model_dump(mode="json"),
                "test_images": spec.test_images, "version": __version__}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _plural(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def describe_trials(spec: StudySpec) -> str:
    """The trial grid as text: a count line, the architectures, then one row per trial."""
    trials = expand_trials(spec)
    lines = [
        f"study {spec.name}: {_plural(len(trials), 'trial')} = {_plural(len(spec.datasets), 'dataset')} x "
        f"{_plural(len(spec.architectures), 'architecture')} x {_plural(len(spec.train_sizes), 'train size')} x "
        f"{_plural(spec.split_pairs, 'split pair')} x {_plural(len(spec.seeds), 'seed')} x 2 splits (A, B)",
        f"images {spec.image_size}x{spec.image_size}; {spec.test_images} held-out images; results in "
        f"{spec.storage.results_dir}",
        f"training budget: {spec.training.budget()}",
    ]
    for a in spec.architectures:
        params = ", ".join(f"{k}={v}" for k, v in a.params.items())
        lines.append(f"architecture {a.name}: {a.kind}({params}), {a.num_parameters:,} parameters")
    lines.append("")
    rows = [[t.trial_id, t.dataset.name, t.architecture.name, str(t.n), str(t.pair), t.split, str(t.seed)]
            for t in trials]
    lines += _table(["trial_id", "dataset", "architecture", "N", "pair", "split", "seed"], rows)
    return "\n".join(lines)
