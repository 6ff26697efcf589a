"""The study spec: the pydantic models of the YAML file, every field with its default and its checks.

`StudySpec` is the whole file; `spec_file.load_spec` reads and validates one (every error at once,
each naming its field), `trials.expand_trials` turns it into the grid of trials it describes.

This module is imported by `gahb-scale validate`: it must not import Ray or MLflow. It imports
torch (through `gahb_scale.models`) only when an architecture is validated, because the
architecture's hyper-parameters are checked by building the network.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
import typing
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Callable

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, PrivateAttr, ValidationError,
                      ValidationInfo, create_model, field_validator, model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ..dataset_kinds import DATASET_KINDS
from ..errors import UserInputError, short_repr
from ..limits import (MAX_BATCH_SIZE, MAX_BOOTSTRAP, MAX_HELD_PIXELS, MAX_IMAGE_SIZE, MAX_MODELS, MAX_NAME_LENGTH,
                      MAX_PARAMETERS, MAX_SAMPLES, MAX_SEED, MAX_STEPS, MAX_WORKERS)
from ..training_config import TrainConfig, TrainSettings

# Constructor arguments of the architectures that the study fixes (images are greyscale).
_FIXED_ARCH_PARAMS = {"channels": "images are greyscale, so the channel count is fixed to 1"}

AUTHORS_EPOCHS, AUTHORS_EPOCH_IMAGES = 1000, 250_000  # the authors' training budget (see TrainingSpec.budget)

_STUDY_NAME = r"^[A-Za-z0-9_-]+$"
_LABEL = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # dataset / architecture names (used in tables and paths)
# What a name that does not match its pattern should be, for the error message.
PATTERN_HINTS = {
    _STUDY_NAME: "use only letters, digits, '_' and '-' (it names files and runs)",
    _LABEL: "use only letters, digits, '_', '-' and '.', starting with a letter or digit",
}


def _error(loc: tuple[str | int, ...], message: str, value: Any = None,
           error_type: str = "spec") -> InitErrorDetails:
    """A validation error with this message at `loc`, relative to where it is raised (inside a
    validator, pydantic prefixes the field or model path). Type "spec": a message of our own, shown
    as it is; otherwise pydantic's error type, whose message the spec file's reader words."""
    return InitErrorDetails(type=PydanticCustomError(error_type, "{detail}", {"detail": message}), loc=loc, input=value)


def _fail(errors: list[InitErrorDetails]) -> None:
    """Raise these errors together, if there are any."""
    if errors:
        raise ValidationError.from_exception_data("StudySpec", errors)


def did_you_mean(word: Any, choices: typing.Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the choice closest to `word`, or '' if none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _duplicates(values: list, describe: Callable[[Any], str], *field: str) -> list[InitErrorDetails]:
    """An error at [i] (or [i].field) for every value that repeats an earlier one."""
    first: dict[Any, int] = {}
    errors = []
    for i, v in enumerate(values):
        if v in first:
            errors.append(_error((i, *field), f"duplicate {describe(v)} (also at [{first[v]}])", v))
        first.setdefault(v, i)
    return errors


def _unique_sorted_ints(what: str, minimum: int, maximum: int) -> Any:
    """The type of a list of distinct integers >= `minimum`, stored sorted (trial ids must not
    depend on the order they are written in); a repeat is an error naming both positions."""
    def distinct(values: list[int]) -> list[int]:
        _fail(_duplicates(values, lambda v: f"{what} {v}"))
        return sorted(values)
    return Annotated[list[Annotated[int, Field(ge=minimum, le=maximum)]], AfterValidator(distinct)]


_TrainSizes = _unique_sorted_ints("train size", 1, MAX_HELD_PIXELS)  # bounded with image_size (StudySpec)
_Seeds = _unique_sorted_ints("seed", 0, MAX_SEED)
_SnapshotSteps = _unique_sorted_ints("snapshot step", 1, MAX_STEPS)


def _numeric(annotation: Any) -> bool:
    """Whether a field holds numbers (int, float, or a list, tuple or optional of them)."""
    if annotation in (int, float):
        return True
    args = [a for a in typing.get_args(annotation) if a is not type(None) and a is not Ellipsis]
    if typing.get_origin(annotation) is Annotated:
        args = args[:1]
    return bool(args) and all(_numeric(a) for a in args)


def _validate_params(model: type[BaseModel], params: dict, what: str, fixed: dict[str, str], context: Any) -> dict:
    """Validate kind-specific params with `model`; return them normalised, defaults filled in.
    An unknown or missing parameter is named with its kind; other errors keep pydantic's words."""
    try:
        return model.model_validate(params, context=context).model_dump(mode="json")
    except ValidationError as exc:
        known = list(model.model_fields)
        errors = []
        for err in exc.errors():
            name = err["loc"][0] if err["loc"] else "?"
            error_type, msg = "spec", err["msg"]
            if err["type"] == "extra_forbidden" and name in fixed:
                msg = f"cannot be set: {fixed[name]}"
            elif err["type"] == "extra_forbidden":
                allowed = ", ".join(known) if known else "none"
                msg = f"unknown parameter of {what}{did_you_mean(name, known)}; allowed: {allowed}"
            elif err["type"] == "missing":
                msg = f"required parameter of {what} is missing"
            else:
                error_type = err["type"]
            errors.append(_error(err["loc"], msg, err["input"], error_type))
        _fail(errors)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numbers_not_booleans(cls, data: Any) -> Any:
        """YAML's true/false are Python booleans, which pydantic takes as 1 and 0: `steps: true`
        would train one step. A number field (or list of numbers) refuses them."""
        if not isinstance(data, dict):
            return data
        errors = []
        for name, value in data.items():
            field = cls.model_fields.get(name) if isinstance(name, str) else None
            items = value if isinstance(value, (list, tuple)) else [value]
            if field is not None and _numeric(field.annotation) and any(isinstance(item, bool) for item in items):
                errors.append(_error((name,), f"a number is needed, not a boolean (got {str(value).lower()[:40]})",
                                     value))
        _fail(errors)
        return data


class _KindSpec(_Model):
    """A named thing of one kind (a dataset, an architecture): `params` are checked by the kind's own
    model and stored as a dict with its defaults filled in."""
    name: str = Field(pattern=_LABEL, max_length=MAX_NAME_LENGTH, description="label used in tables and figures")
    kind: str
    params: dict[str, Any] = Field(default_factory=dict, validate_default=True)

    kind_label: typing.ClassVar[str]  # names the kind in messages
    known_kinds: typing.ClassVar[Callable[[], list[str]]]  # in the order messages list them
    params_model: typing.ClassVar[Callable[[str], type[BaseModel]]]  # a kind's parameters
    fixed_params: typing.ClassVar[dict[str, str]] = {}  # parameters the study fixes, and why

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        known = cls.known_kinds()
        if v not in known:
            raise ValueError(f"unknown {cls.kind_label} {short_repr(v)}{did_you_mean(v, known)}; "
                             f"known: {', '.join(known)}")
        return v

    @field_validator("params", mode="before")
    @classmethod
    def _params_none(cls, v: Any) -> Any:
        return {} if v is None else v

    @field_validator("params")
    @classmethod
    def _params_of_kind(cls, v: dict, info: ValidationInfo) -> dict:
        kind = info.data.get("kind")
        if kind is None:
            return v
        return _validate_params(cls.params_model(kind), v, f"{cls.kind_label} {kind!r}", cls.fixed_params,
                                info.context)


class DatasetSpec(_KindSpec):
    """One image distribution: its params are checked by its kind's model (`gahb_scale.dataset_kinds`),
    so `gahb_scale.dataset_kinds.build_pool(kind, n, size, seed, **params)` can be called with them."""
    pixel_shuffle_seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="apply one fixed random pixel permutation drawn from this seed")

    kind_label = "dataset kind"
    known_kinds = staticmethod(lambda: list(DATASET_KINDS))
    params_model = staticmethod(lambda kind: DATASET_KINDS[kind].params)


def _architectures() -> dict[str, type]:
    from ..models import ARCHITECTURES  # lazy: imports torch
    return ARCHITECTURES


@lru_cache(maxsize=None)
def _arch_params_model(kind: str) -> type[BaseModel]:
    """A pydantic model of the constructor keywords of an architecture (types from its annotations)."""
    cls = _architectures()[kind]
    hints = typing.get_type_hints(cls.__init__)
    keywords = list(inspect.signature(cls.__init__).parameters.values())[1:]
    fields = {p.name: (hints[p.name], ... if p.default is p.empty else p.default)
              for p in keywords if p.name not in _FIXED_ARCH_PARAMS}
    return create_model(f"{cls.__name__}Params", __base__=_Model, **fields)


class ArchitectureSpec(_KindSpec):
    """One network: a key of `gahb_scale.models.ARCHITECTURES` and its constructor hyper-parameters.

    Validation builds the network once on the CPU, so any hyper-parameter the constructor rejects
    is a spec error; `params` is stored with the constructor's defaults filled in.
    """
    _size_multiple: int = PrivateAttr(default=1)
    _num_parameters: int = PrivateAttr(default=0)

    kind_label = "architecture kind"
    known_kinds = staticmethod(lambda: sorted(_architectures()))
    params_model = staticmethod(_arch_params_model)
    fixed_params = _FIXED_ARCH_PARAMS

    @model_validator(mode="after")
    def _buildable(self) -> ArchitectureSpec:
        from ..models import count_parameters
        net = self.shape_only_network()
        self._size_multiple = int(getattr(net, "size_multiple", 1))
        self._num_parameters = int(count_parameters(net))
        if self._num_parameters > MAX_PARAMETERS:
            _fail([_error(("params",), f"{self._num_parameters:,} parameters, more than one GPU can train "
                                       f"({MAX_PARAMETERS:.0e}: fp32 weights, gradients and Adam state)", self.params)])
        return self

    def shape_only_network(self) -> Any:
        """The network built on torch's "meta" device: its layers and shapes, no memory for its
        weights, so a checked network costs nothing whatever its size."""
        import torch  # lazy: validation imports torch only for an architecture

        from ..models import build_model
        try:
            with torch.device("meta"):
                return build_model(self.kind, **self.params)
        except Exception as exc:  # noqa: BLE001 - any constructor failure is the user's params
            _fail([_error(("params",), f"cannot build {self.kind!r} with these parameters: {str(exc)[:300]}",
                          self.params)])

    def shape_error(self, image_size: int) -> str | None:
        """Why the network cannot denoise an image_size x image_size image (its output must have
        the input's shape), or None: one forward pass on the meta device, where only shapes exist."""
        import torch

        net = self.shape_only_network().eval()
        x = torch.zeros(1, 1, image_size, image_size, device="meta")
        try:
            with torch.no_grad():
                out = net(x)
        except Exception as exc:  # noqa: BLE001 - a layer that does not fit the image
            return f"cannot run on a {image_size}x{image_size} image: {str(exc)[:300]}"
        if tuple(out.shape) != tuple(x.shape):
            return f"turns a {image_size}x{image_size} image into {tuple(out.shape)[2:]}: its output must keep the shape"
        return None

    @property
    def size_multiple(self) -> int:
        """Image sizes must be a multiple of this (2**blocks for the UNet)."""
        return self._size_multiple

    @property
    def num_parameters(self) -> int:
        return self._num_parameters


# The core's fields every run shares (its seed is each model's own).
_TRAIN_CONFIG_FIELDS = frozenset(TrainSettings.model_fields)
# Training settings a study may give per train size: a model's schedule can follow its N (e.g. the
# small N trained long enough to memorize, on smaller batches) while every model of one N is
# trained alike.
PER_TRAIN_SIZE = ("steps", "lr_halve_every", "batch_size")


def _count(value: Any, maximum: int, where: str = "") -> int:
    if isinstance(value, bool):
        raise ValueError(f"{where}a number is needed, not a boolean (got {str(value).lower()})")
    if not isinstance(value, int):
        raise ValueError(f"{where}a whole number is needed (got {short_repr(value)})")
    if not 1 <= value <= maximum:
        raise ValueError(f"{where}must be in [1, {maximum:,}] (got {value})")
    return value


def _per_train_size(maximum: int) -> Callable[[Any], int | dict[int, int]]:
    """A validator of one count in [1, `maximum`] for every N, or a mapping {N: count} (which train
    sizes it must name is checked by the study, which knows them)."""
    def validate(value: Any) -> int | dict[int, int]:
        if not isinstance(value, dict):
            return _count(value, maximum)
        mapping = {}
        for n, count in value.items():
            size = int(n) if isinstance(n, str) and n.isdigit() and len(n) <= 20 else n
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"the keys of a mapping are train sizes N >= 1 (got {short_repr(n)})")
            mapping[size] = _count(count, maximum, f"N = {size}: ")
        return mapping
    return validate


# Any: serialised as given (JSON makes the keys strings, which the validator reads back as N)
_PerTrainSizeSteps = Annotated[Any, PlainValidator(_per_train_size(MAX_STEPS))]
_PerTrainSizeBatch = Annotated[Any, PlainValidator(_per_train_size(MAX_BATCH_SIZE))]


class TrainingSpec(TrainSettings, _Model):
    """The training of every model of the study: the core's `TrainSettings` (their defaults and
    checks), with `steps`, `lr_halve_every` and `batch_size` given for every N or per N, and how a
    model is spread over workers."""
    steps: _PerTrainSizeSteps = Field(default=TrainSettings.model_fields["steps"].default,
                                 description="gradient steps: one number for every N (the paper's recipe), "
                                             "or a mapping {N: steps}")
    lr_halve_every: _PerTrainSizeSteps = Field(default=TrainSettings.model_fields["lr_halve_every"].default,
                                          description="Adam lr halved every this many steps (or a mapping {N: steps})")
    batch_size: _PerTrainSizeBatch = Field(default=TrainSettings.model_fields["batch_size"].default,
                                           description="global batch, split evenly over the workers (or a mapping "
                                                       "{N: batch})")
    snapshot_steps: _SnapshotSteps = Field(
        default_factory=list, description="steps whose weights are kept, for memorization over training time")
    workers: int = Field(default=1, ge=1, le=MAX_WORKERS, validate_default=True, description="Ray Train workers per trial (> 1: DDP)")
    shared_init: bool = Field(default=False, description="ablation: models A and B of a pair start from the same "
                                                         "weights and share sigma draws, noise and batch order")

    @staticmethod
    def last_step(steps: int | dict[int, int]) -> int:
        return max(steps.values()) if isinstance(steps, dict) else steps

    def steps_for(self, n: int) -> int:
        """The gradient steps of a model trained on N = `n` images."""
        return self.per_train_size(n)["steps"]

    @property
    def max_steps(self) -> int:
        return self.last_step(self.steps)

    def snapshot_steps_for(self, n: int) -> list[int]:
        """The snapshots a model of N = `n` takes: those within its training."""
        return [s for s in self.snapshot_steps if s <= self.steps_for(n)]

    def config(self, seed: int, n: int) -> TrainConfig:
        """The core's configuration of the training of one model of N = `n` images, seeded by that
        model's training seed."""
        settings = {**self.model_dump(include=_TRAIN_CONFIG_FIELDS), **self.per_train_size(n),
                    "snapshot_steps": self.snapshot_steps_for(n)}
        return TrainConfig(seed=seed, **settings)

    def per_train_size(self, n: int) -> dict[str, int]:
        """The settings that may be given per N, as they are for N = `n`."""
        values = {name: getattr(self, name) for name in PER_TRAIN_SIZE}
        return {name: value[n] if isinstance(value, dict) else value for name, value in values.items()}

    def budget(self) -> str:
        """The training budget in the authors' units: their default is 1000 epochs of 250,000 tiled
        images at batch 512 (488,282 steps), the learning rate halved every 100 epochs."""
        if any(isinstance(getattr(self, name), dict) for name in PER_TRAIN_SIZE):
            sizes = sorted({n for name in PER_TRAIN_SIZE if isinstance(getattr(self, name), dict)
                            for n in getattr(self, name)})
            return "per N:" + "".join(f"\n  N = {n}: " + self.model_copy(update=self.per_train_size(n)).budget() for n in sizes)
        images = self.steps * self.batch_size
        return (f"{self.steps:,} steps of batch {self.batch_size} = {images / 1e6:.3g}M images per model = "
                f"{images / AUTHORS_EPOCH_IMAGES:.4g} epochs of {AUTHORS_EPOCH_IMAGES:,} "
                f"({100 * images / (AUTHORS_EPOCHS * AUTHORS_EPOCH_IMAGES):.3g}% of the authors' {AUTHORS_EPOCHS} epochs); "
                f"lr halved every {self.lr_halve_every * self.batch_size / AUTHORS_EPOCH_IMAGES:.3g} epochs "
                f"(the authors: every 100)")

    @field_validator("workers")
    @classmethod
    def _splits_batch(cls, v: int, info: ValidationInfo) -> int:
        batch = info.data.get("batch_size")
        for size in (batch.values() if isinstance(batch, dict) else [] if batch is None else [batch]):
            if size % v:
                raise ValueError(f"training.batch_size = {size} cannot be split evenly over {v} workers")
        return v


class SamplingSpec(_Model):
    """The Kadkhodaie–Simoncelli sampler (stochastic coarse-to-fine gradient ascent)."""
    num_samples: int = Field(default=16, ge=1, le=MAX_SAMPLES, description="samples per model")
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="sample i of every model uses seed + i (shared by A and B)")
    beta: float = Field(default=1.0, gt=0, le=1, description="1: deterministic; < 1 injects noise")
    h0: float = Field(default=0.01, gt=0, le=1, description="first step size; h_t = h0·t / (1 + h0·(t − 1))")
    sigma_0: float = Field(default=1.0, gt=0, description="sd of the initial noise image, on the [0, 1] scale")
    sigma_L: float = Field(default=0.01, gt=0, validate_default=True,
                           description="a sample is done once its estimated noise sd is at most this")
    mean: float = Field(default=0.5, ge=0, le=1, description="grey level of the initial image")
    max_steps: int = Field(default=5000, ge=1, le=MAX_STEPS, description="step cap (hitting it is reported)")

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


class AnalysisSpec(_Model):
    """Per-model and per-pair measurements."""
    sigmas: list[float] = Field(default_factory=_default_sigmas, min_length=1,
                                description="PSNR-curve noise levels, grey levels /255")
    psnr_images: int = Field(default=64, ge=1, le=MAX_SAMPLES, description="images per PSNR curve, at most: of the "
                                                                           "model's training, held-out and partner's "
                                                                           "training images")
    jacobian_images: int = Field(default=2, ge=1, le=MAX_SAMPLES, description="noisy images per model for the Jacobian")
    jacobian_sigmas: list[float] = Field(default_factory=lambda: [5.0, 25.0, 100.0], min_length=1,
                                         description="noise levels of the Jacobians, grey levels /255")
    eigenvalues_kept: int = Field(default=64, ge=1, le=MAX_IMAGE_SIZE**2, description="at most; capped at the number of pixels")
    eigenvector_images: int = Field(default=8, ge=1, validate_default=True,
                                    description="leading eigenvectors kept per Jacobian (at most; capped at the number "
                                                "of pixels P): drawn as images, and the k of the A/B basis overlap "
                                                "(chance k/P)")
    memorization_threshold: float = Field(default=1 / 3, gt=0, lt=1, description="d1/d2 below this: memorized")
    onset_f_mem: float = Field(default=0.5, gt=0, le=1, description="memorization has set in once f_mem reaches this "
                                                                     "(over training.snapshot_steps)")
    slope_sigma_range: tuple[float, float] = Field(default=(0.0, 255.0), validate_default=True,
                                                   description="noise levels (grey levels) the PSNR slope is fitted on")
    eigenvalue_threshold: float = Field(default=0.5, gt=0, description="Jacobian eigenvalues above this are counted "
                                                                        "against the disc family's 5 tangent dimensions")
    bootstrap: int = Field(default=1000, ge=1, le=MAX_BOOTSTRAP, description="bootstrap resamples for f_mem intervals")

    @field_validator("sigmas", "jacobian_sigmas")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        errors = [_error((i,), f"noise levels are grey levels in (0, 255] (got {s:g})", s)
                  for i, s in enumerate(v) if not 0 < s <= 255]
        _fail(errors + _duplicates(v, lambda s: f"noise level {s:g}"))
        return sorted(v)

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
    cpus_per_trial: float = Field(default=1.0, gt=0, description="CPUs of one training worker, and of one "
                                                                  "analysis task")
    gpus_per_trial: float = Field(default=0.0, ge=0, description="fractional only below 1 (a share of one GPU)")
    max_concurrent_trials: int = Field(default=1, ge=1, le=MAX_MODELS, description="packs trained side by side "
                                                                                   "(at most what the cluster holds)")
    models_per_pack: int | None = Field(
        default=None, ge=1, le=MAX_MODELS, description="models of one architecture and schedule trained together in one "
                                                       "worker (1: one model per trial); null: chosen from their cost "
                                                       "(docs/internals.md, packs)")
    max_failures: int = Field(default=3, ge=0, le=1000, description="restarts after a worker or node dies: a trial from its "
                                                           "last checkpoint, an analysis task from the start")

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_or_share(cls, v: float) -> float:
        if v > 1 and not float(v).is_integer():
            raise ValueError(f"fractional GPUs are only possible below 1 (a share of one GPU); "
                             f"use a whole number of GPUs (got {v:g})")
        return v


def _without_query(location: str) -> tuple[str, str]:
    """A URI's part before its query (`?endpoint_override=...`), and the query with its `?`."""
    base, query = location.split("?", 1) if "?" in location else (location, "")
    return base.rstrip("/"), f"?{query}" if query else ""


def results_folder_name(location: str) -> str:
    """The last part of a results folder's path or URI: its name below the results root."""
    if "://" in location:
        return _without_query(location)[0].rsplit("/", 1)[-1]
    return Path(location).expanduser().resolve().name


def results_below(root: str, name: str) -> str:
    """The folder `name` in the results root `root` (a path or a URI, whose query it keeps)."""
    if "://" in root:
        base, query = _without_query(root)
        return f"{base}/{name}{query}"
    return str(Path(root) / name)


def tracking_uri_problem(uri: str) -> str | None:
    """Why MLflow cannot keep a study's runs at tracking URI `uri`; None where it can."""
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]+):", uri)
    if uri.lower() in ("databricks", "databricks-uc", "uc"):
        return None
    if (scheme is None or scheme[1].lower() == "file") and \
            os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        return (f"{short_repr(uri)} names a folder, MLflow's file store, which MLflow 3 keeps no new runs in: give "
                f"an sqlite store (sqlite:///PATH/mlflow.db) or a tracking server (http://HOST:PORT)")
    if scheme[1].lower().split("+")[0] not in ("http", "https", "sqlite", "postgresql", "mysql", "mssql",
                                                 "databricks", "databricks-uc", "uc"):
        return (f"{short_repr(uri)}: MLflow keeps runs at a tracking server (http(s)://) or in a database "
                f"(sqlite:///, postgresql://, mysql://, mssql://) or Databricks")
    return None


class StorageSpec(_Model):
    """Where results go. `results_dir` is the study's results folder: a local path (relative:
    against the current directory) or a URI such as s3://bucket/prefix; default results/<study
    name>. Its parent is the results root; `--results ROOT` moves the folder to ROOT/<its name>
    (`spec_file.load_spec`), so every command's --results names the same root."""
    results_dir: str | None = Field(default=None, min_length=1, description="a folder or a URI such as "
                                                                           "s3://bucket/prefix; null: results/<name>")
    mlflow_tracking_uri: str | None = Field(
        default=None, description="a tracking server (http://...) or store URI; null: MLFLOW_TRACKING_URI, else an "
                                  "sqlite store under a local results_dir (remote results: ~/.gahb-scale/mlflow)")

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _usable_by_mlflow(cls, v: str | None) -> str | None:
        if v is not None and (problem := tracking_uri_problem(v)):
            raise ValueError(problem)
        return v

    @field_validator("results_dir")
    @classmethod
    def _names_a_folder(cls, v: str | None) -> str | None:
        if v is not None and not results_folder_name(v):
            raise ValueError(f"{short_repr(v)} names no folder of its own (it is the filesystem root): a "
                             f"study writes a dozen folders at the top of its results folder (e.g. results/<name>)")
        return v

    def results_location(self) -> str:
        """`results_dir` as an absolute path, or the URI unchanged (call on the driver)."""
        if self.results_dir is None:
            raise UserInputError("storage.results_dir is not set")
        if "://" in self.results_dir:
            return self.results_dir
        return str(Path(self.results_dir).expanduser().resolve())

    def results_root(self) -> str:
        """The results root holding this study's folder (what --results names)."""
        location = self.results_location()
        if "://" in location:
            base, query = _without_query(location)
            return base.rsplit("/", 1)[0] + query
        return str(Path(location).parent)


class StudySpec(_Model):
    """A whole study. Fields are declared in validation order: `image_size` after `architectures`
    (it is checked against them) and `resources` after `training`."""
    name: str = Field(pattern=_STUDY_NAME, max_length=MAX_NAME_LENGTH, description="the study id")
    description: str = Field(default="", description="free text, shown at the top of the report")
    datasets: list[DatasetSpec] = Field(min_length=1, description="each a name, a kind, its params and an optional "
                                                                  "pixel_shuffle_seed (below)")
    architectures: list[ArchitectureSpec] = Field(min_length=1, description="each a name, a kind (unet, bfcnn) and "
                                                                            "params, its constructor's arguments")
    image_size: int = Field(ge=4, le=MAX_IMAGE_SIZE, description="images are image_size x image_size, greyscale")
    train_sizes: _TrainSizes = Field(min_length=1, description="N; sorted ascending")
    split_pairs: int = Field(default=1, ge=1, le=MAX_MODELS,
                             description="split pairs (two disjoint training sets), each drawn with seeds of its own")
    seeds: _Seeds = Field(default_factory=lambda: [0], min_length=1, description="training seeds (init + batch order)")
    test_images: int = Field(default=64, ge=1, le=MAX_HELD_PIXELS, description="held-out images, disjoint from every split")
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec, validate_default=True)

    @field_validator("datasets", "architectures")
    @classmethod
    def _unique_names(cls, v: list[_KindSpec], info: ValidationInfo) -> list[_KindSpec]:
        what = info.field_name[:-1]  # "dataset", "architecture"
        _fail(_duplicates([item.name for item in v], lambda name: f"{what} name {name!r}", "name"))
        return v

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

    @field_validator("training")
    @classmethod
    def _per_train_size_names_every_n(cls, v: TrainingSpec, info: ValidationInfo) -> TrainingSpec:
        sizes, errors = info.data.get("train_sizes"), []
        for name in PER_TRAIN_SIZE:
            given = getattr(v, name)
            if isinstance(given, dict) and sizes is not None and sorted(given) != sizes:
                missing, extra = sorted(set(sizes) - set(given)), sorted(set(given) - set(sizes))
                said = "; ".join(part for part in (f"no value for N = {missing}" if missing else "",
                                                   f"N = {extra} not in train_sizes" if extra else "") if part)
                errors.append(_error((name,), f"a mapping {{N: value}} must name every train size once: {said}"))
        _fail(errors)
        return v

    @field_validator("analysis")
    @classmethod
    def _jacobians_at_held_out_images(cls, v: AnalysisSpec, info: ValidationInfo) -> AnalysisSpec:
        test_images = info.data.get("test_images")
        if test_images is not None and v.jacobian_images > test_images:
            _fail([_error(("jacobian_images",), f"Jacobians are taken at held-out images, and there are "
                                                f"test_images = {test_images} (got {v.jacobian_images})")])
        return v

    @field_validator("resources")
    @classmethod
    def _resources_fit_training(cls, v: ResourceSpec, info: ValidationInfo) -> ResourceSpec:
        training = info.data.get("training")
        if training is not None and training.workers > 1 and 0 < v.gpus_per_trial < 1:
            _fail([_error(("gpus_per_trial",), f"DDP with training.workers = {training.workers} needs a whole GPU "
                                               f"per worker, not a share (got {v.gpus_per_trial:g})")])
        return v

    @field_validator("storage")
    @classmethod
    def _default_results_dir(cls, v: StorageSpec, info: ValidationInfo) -> StorageSpec:
        name = info.data.get("name")
        if v.results_dir is None and name is not None:
            v = v.model_copy(update={"results_dir": f"results/{name}"})
        return v

    @model_validator(mode="after")
    def _within_bounds(self) -> StudySpec:
        """What the study multiplies, bounded before its grid is built (see gahb_scale.limits),
        and every network run once, shapes only, on an image of the study's size."""
        models = len(self.datasets) * len(self.architectures) * len(self.train_sizes) * self.split_pairs * len(self.seeds) * 2
        errors = []
        if models > MAX_MODELS:
            errors.append(_error(("train_sizes",), f"the grid has {models:,} models (datasets x architectures x "
                                                   f"train_sizes x split_pairs x seeds x 2), more than a study may "
                                                   f"train ({MAX_MODELS:,})"))
        held = (2 * max(self.train_sizes) + self.test_images) * self.image_size**2
        if held > MAX_HELD_PIXELS:
            errors.append(_error(("train_sizes",), f"N = {max(self.train_sizes):,} at {self.image_size}x{self.image_size} "
                                                   f"needs {held:.3g} pixels held at once (2 x N + test_images "
                                                   f"images), more than any node's memory ({MAX_HELD_PIXELS:.3g})"))
        for i, architecture in enumerate(self.architectures):
            if problem := architecture.shape_error(self.image_size):
                errors.append(_error(("architectures", i, "params"), f"{architecture.kind} {problem}"))
        _fail(errors)
        return self

    @model_validator(mode="after")
    def _default_folder_cache(self) -> StudySpec:
        """A folder is prepared once per study, before training, and every task reads that copy by
        file offset: by default it is cached with the results. Remote results cannot hold a file read
        that way, so there the cache must be a folder every node can read."""
        if "://" in (self.storage.results_dir or ""):
            errors = [_error(("datasets", i, "params", "cache_dir"),
                             f"results are remote ({self.storage.results_dir}), so set cache_dir to a folder every "
                             f"node can read (e.g. beside the images on the shared volume)")
                      for i, d in enumerate(self.datasets) if d.kind == "folder" and d.params.get("cache_dir") is None]
            _fail(errors)
            return self
        cache = str(Path(self.storage.results_location()) / "datasets")
        datasets = [d.model_copy(update={"params": {**d.params, "cache_dir": cache}})
                    if d.kind == "folder" and d.params.get("cache_dir") is None else d for d in self.datasets]
        object.__setattr__(self, "datasets", datasets)  # frozen model: filled in once, at validation
        return self
