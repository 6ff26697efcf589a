"""The trial grid of a study: one `Trial` per model to train, its stable id, and the grid as text.

A study is every dataset × architecture × N × split pair × seed, and for each, two models trained
on the disjoint halves A and B of the split pair: `expand_trials` lists them in that order;
`describe_trials` renders the grid for `gahb-scale validate`; `initial_model` gives a trial's
network at step 0 and its training settings.

Trial ids. A trial's id is a hash of exactly what determines the trained network: the dataset
spec (minus its cache folder, plus its kind's version), the architecture spec (hyper-parameters
with defaults filled in), image size, N, split pair, split, seed, number of held-out images and the
training spec (minus the logging and checkpoint cadence). The study name, sampling, analysis,
resources and storage are left out, so a re-run with other analysis settings, or the same trial in
another study, finds and reuses the trained model. `analysis_id` hashes what the analysis depends on instead.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .. import __version__
from ..dataset_kinds import dataset_kind
from ..training_config import TrainConfig
from .spec import ArchitectureSpec, DatasetSpec, StudySpec
from .spec_file import SpecError

if TYPE_CHECKING:  # torch is imported where a network is built: `validate` needs none
    import torch

# Bump when the meaning of a hashed field changes, so old trained models are not reused by mistake.
# 2: the A and B models of a pair are independent (own weights and streams); discs by the authors' recipe.
TRIAL_ID_VERSION = 2
# Fields that are part of the spec but do not change the trained network: left out of trial ids.
_TRAINING_NOT_IN_ID = frozenset({"log_every", "checkpoint_every"})
_DATASET_PARAMS_NOT_IN_ID = frozenset({"cache_dir"})


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

    def training_seed(self, shared_init: bool = False) -> int:
        """Seed of this model's initial weights and of its training streams (σ draws, noise, batch order).

        The paper trains the two models of a pair as independent networks, so the seed is drawn
        from (seed, split): a study with seeds [0, 1] has four unrelated models per N. With
        `shared_init` (an ablation) both splits use `seed` itself and differ only in their data.
        """
        if shared_init:
            return self.seed
        return int(np.random.SeedSequence([self.seed, "AB".index(self.split)]).generate_state(1)[0])

    @property
    def partner_split(self) -> Literal["A", "B"]:
        """The split of the pair's other model, trained on the disjoint half."""
        return "B" if self.split == "A" else "A"

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
    hashed_dataset = dataset.model_dump(mode="json")
    hashed_dataset["params"] = {name: value for name, value in hashed_dataset["params"].items()
                                if name not in _DATASET_PARAMS_NOT_IN_ID}
    if (version := dataset_kind(dataset.kind).version) > 1:
        hashed_dataset["kind_version"] = version
    identity = {
        "id_version": TRIAL_ID_VERSION,
        "dataset": hashed_dataset,
        "architecture": architecture.model_dump(mode="json"),
        "image_size": spec.image_size,
        "n": n,
        "pair": pair,
        "seed": seed,
        "test_images": spec.test_images,
        # the model's own schedule: with settings per N, a change for one N retrains that N only
        "training": {**spec.training.recorded(mode="json", exclude=set(_TRAINING_NOT_IN_ID)),
                     **spec.training.per_train_size(n)},
    }
    if split is not None:
        identity["split"] = split
    return identity


def short_id(text: str) -> str:
    """The one id recipe, of trials, pairs, packs and analyses: the first 12 hex digits of the SHA-256
    of `text`. Each id hashes its own canonical text, kept byte for byte: a new text for an old
    id would orphan the results written under it."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _identity_id(identity: dict[str, Any]) -> str:
    return short_id(json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False))


def expand_trials(spec: StudySpec) -> list[Trial]:
    """All trials, ordered by dataset, architecture, N, pair, seed, split (A before B)."""
    trials = []
    grid = itertools.product(spec.datasets, spec.architectures, spec.train_sizes, range(spec.split_pairs), spec.seeds)
    for dataset, arch, n, pair, seed in grid:
        pair_id = _identity_id(trial_identity(spec, dataset, arch, n, pair, None, seed))
        for split in ("A", "B"):
            trial_id = _identity_id(trial_identity(spec, dataset, arch, n, pair, split, seed))
            trials.append(Trial(spec.name, dataset, arch, n, pair, split, seed, trial_id, pair_id))
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):  # only reachable through a hash collision
        raise SpecError(spec.name, problem="two trials share a trial id (hash collision); rename a dataset")
    return trials


def analysis_id(spec: StudySpec) -> str:
    """Hash of the sampling and analysis settings and of the package version (a release may
    change what is measured): analysed rows are valid for these only."""
    settings = {"sampling": spec.sampling.model_dump(mode="json"), "analysis": spec.analysis.model_dump(mode="json"),
                "test_images": spec.test_images, "version": __version__}
    return short_id(json.dumps(settings, sort_keys=True))  # json's default separators, as ids have always used


def _plural(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def format_table(header: list[str], rows: list[list[str]], align: Literal["<", ">"] = "<") -> str:
    """A plain-text table: header, a rule, one line per row; columns left- ("<") or right-aligned (">")."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(f"{c:{align}{w}}" for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def describe_trials(spec: StudySpec) -> str:
    """The trial grid as text: a count line, the architectures, then one row per trial."""
    trials = expand_trials(spec)
    lines = [
        f"study {spec.name}: {_plural(len(trials), 'trial')} = {_plural(len(spec.datasets), 'dataset')} x "
        f"{_plural(len(spec.architectures), 'architecture')} x {_plural(len(spec.train_sizes), 'train size')} x "
        f"{_plural(spec.split_pairs, 'split pair')} x {_plural(len(spec.seeds), 'seed')} x 2 splits (A, B)",
        f"images {spec.image_size}x{spec.image_size}; {spec.test_images} held-out images; results in "
        f"{spec.storage.results_location()}",
        f"training budget: {spec.training.budget()}",
    ]
    for architecture in spec.architectures:
        params = ", ".join(f"{name}={value}" for name, value in architecture.params.items())
        lines.append(f"architecture {architecture.name}: {architecture.kind}({params}), "
                     f"{architecture.num_parameters:,} parameters")
    lines.append("")
    rows = [[t.trial_id, t.dataset.name, t.architecture.name, str(t.n), str(t.pair), t.split, str(t.seed)]
            for t in trials]
    lines.append(format_table(["trial_id", "dataset", "architecture", "N", "pair", "split", "seed"], rows))
    return "\n".join(lines)


def initial_model(spec: StudySpec, trial: Trial) -> tuple[torch.nn.Module, TrainConfig]:
    """A trial's network at step 0 and its training settings, both seeded by its training seed:
    independent for the two models of a pair unless `training.shared_init` asks for the ablation."""
    from ..models import build_model  # here: the spec's own modules import no torch

    seed = trial.training_seed(spec.training.shared_init)
    net = build_model(trial.architecture.kind, seed=seed, **trial.architecture.params)
    return net, spec.training.config(seed, trial.n)
