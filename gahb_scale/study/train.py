"""Training stage: a Ray Tune grid whose trials each run one Ray Train TorchTrainer for one *pack*:
several models of one architecture trained together in one worker (`packing.ModelPack`), so a
study of many small models pays Ray's worker-group start once per pack, not once per model, and
small models share a device. Each model is what it would be trained alone; its model file,
snapshots and table rows are its own.

Resource model, failures and resume: docs/internals.md; how packs are recorded and resumed:
`packs_to_train`.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.fs as pafs
import ray
import ray.train
import ray.tune
import torch
from ray import cloudpickle
from ray.train.torch import TorchTrainer

from ..design.datasets import POOL_RECORD, split_images
from ..design.spec import StudySpec
from ..design.trials import Trial, initial_model, short_id
from ..errors import UserInputError
from ..models import build_model, count_parameters
from ..packing import ModelPack
from ..training import train_pack, training_flops_per_image
from .progress import StageProgress, failure_reason, log, loss_summary
from .status import StudyState, recorded_packs, resume_step, trained_models
from .store import (STATE_FILE, StudyStore, StudyTables, model_path, pack_path, pack_run_dir, pool_path, snapshot_path,
                    training_record_path)

if TYPE_CHECKING:  # MLflow stays out of the Train workers, which import this module
    from .track import StudyTracker

# A Tune trial is only a driver: it holds this much memory and no CPU or GPU, so it never takes the
# place its worker group needs. Bytes: a Python process with torch imported, roughly.
TRIAL_DRIVER_MEMORY = 512 * 2**20
# Ray Train V2's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default)
REPORT_EVERY_S = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0))


def save_weights(store: StudyStore, relative: str, net: torch.nn.Module, step: int) -> None:
    """A model file (the trained model's, or a snapshot's): its weights and the step they are from."""
    buffer = io.BytesIO()
    torch.save({"state_dict": net.state_dict(), "step": step}, buffer)
    store.write_bytes(relative, buffer.getvalue())


def train_worker(payload: dict) -> None:
    """Ray Train worker loop: train one pack of denoisers, report progress, checkpoint, save each
    model that has no model file yet (a pack resumed after a kill between its models' files)."""
    spec, pack, store = payload["spec"], payload["pack"], StudyStore(payload["results"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, round(spec.resources.cpus_per_trial)))  # Ray's own default rounds fractions down
    images = [split_images(trial.dataset, spec.image_size, trial.n, spec.test_images, trial.pair,
                           parts=(trial.split,), keep_uint8=True, prepared=payload["prepared"])[trial.split]
              for trial in pack.trials]
    nets, configs = zip(*(initial_model(spec, trial) for trial in pack.trials))
    models = ModelPack(list(nets))
    parallel = ray.train.torch.prepare_model(models) if world > 1 else models.to(device)

    workdir = Path(tempfile.mkdtemp(prefix=f"gahb-{pack.pack_id}-"))
    state_path = workdir / STATE_FILE
    restored = ray.train.get_checkpoint()
    for trial in pack.trials if restored is None and rank == 0 else ():  # from step 0: on the pool now
        if trial.trial_id not in payload["trained"] and trial.dataset.name in payload["prepared"]:
            pool = payload["prepared"][trial.dataset.name]
            store.write_bytes(pool_path(trial.trial_id), json.dumps({key: pool[key] for key in POOL_RECORD}).encode())
    if restored is not None:
        with restored.as_directory() as directory:
            shutil.copy(Path(directory) / STATE_FILE, state_path)
    last, reported = {}, -math.inf

    def on_log(step: int, metrics: dict) -> None:
        # Ray Train queues one report per worker and takes it when its controller polls (every
        # REPORT_EVERY_S); a report sooner blocks training until then. Reporting every 50 steps of
        # 15 ms did just that: a lone model trained at half its speed. So a report at most that
        # often; the losses in between reach the model's run from its training record.
        nonlocal reported
        last.update(metrics, step=step)
        if time.monotonic() - reported >= REPORT_EVERY_S:
            reported = time.monotonic()
            ray.train.report(dict(last))

    def on_checkpoint(step: int, path: Path) -> None:
        nonlocal reported
        checkpoint = ray.train.Checkpoint.from_directory(str(workdir)) if rank == 0 else None
        ray.train.report({**last, "step": step}, checkpoint=checkpoint)
        reported = time.monotonic()

    def on_snapshot(step: int, k: int, module: torch.nn.Module) -> None:
        if rank == 0:
            save_weights(store, snapshot_path(pack.trials[k].trial_id, step), module, step)

    started = time.perf_counter()
    results = train_pack(parallel, images, list(configs), device=device, checkpoint_path=state_path, on_log=on_log,
                         on_checkpoint=on_checkpoint, on_snapshot=on_snapshot, shard=(rank, world))
    seconds = time.perf_counter() - started
    for trial, result in zip(pack.trials, results):
        if rank == 0 and trial.trial_id not in payload["trained"]:
            # the record first: a model file is what marks a model trained (so a half-written
            # record is never trusted, and needs no temporary file)
            store.write_bytes(training_record_path(trial.trial_id), json.dumps({
                "trial": trial.as_row(), "losses": result.losses, "steps": result.steps_done,
                "resumed_from": result.resumed_from, "train_seconds": seconds, "pack_id": pack.pack_id,
                "pack_size": len(pack.trials), "device": str(device), "workers": world,
                "num_parameters": count_parameters(result.net)}).encode(), atomic=False)
            save_weights(store, model_path(trial.trial_id), result.net, result.steps_done)
    shutil.rmtree(workdir, ignore_errors=True)


class TorchTrainerWithoutStateApi(TorchTrainer):
    """A TorchTrainer for a Ray without the State API: the local Ray a study starts runs no
    dashboard. Ray Train starts a placement-group cleaner with every run, which asks the State API
    each second whether the run's controller is alive, to free its placement group should it die.
    Without the API each ask blocks 40 s and fails, so that cleaner never cleans, and stopping it
    held every pack 12 s at its end. On one node a controller dies only with the study's own Ray."""

    def _create_default_callbacks(self) -> list:
        return [c for c in super()._create_default_callbacks() if type(c).__name__ != "PlacementGroupCleanerCallback"]


def tune_trial(config: dict, payloads: dict) -> None:
    """One Tune trial: a TorchTrainer for one pack of models, its progress forwarded to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    payload = payloads[config["pack_id"]]
    spec, resources = payload["spec"], payload["spec"].resources
    use_gpu = resources.gpus_per_trial > 0
    worker_resources = {"CPU": resources.cpus_per_trial, **({"GPU": resources.gpus_per_trial} if use_gpu else {})}
    (TorchTrainerWithoutStateApi if payload["local_ray"] else TorchTrainer)(
        train_worker, train_loop_config=payload,
        scaling_config=ray.train.ScalingConfig(num_workers=spec.training.workers, use_gpu=use_gpu,
                                               resources_per_worker=worker_resources),
        run_config=ray.train.RunConfig(name=config["pack_id"], callbacks=[TuneReportCallback()],
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                                       # a dead worker: the group restarts from the last checkpoint
                                       failure_config=ray.train.FailureConfig(max_failures=resources.max_failures),
                                       **ray_storage(StudyStore(payload["results"]))),
    ).fit()


@dataclass(frozen=True)
class Pack:
    """Models trained together in one Ray Train run, as one `ModelPack` (a single model when
    packing is off). Its id names the run, so a re-started study finds the pack's checkpoint."""
    trials: tuple[Trial, ...]
    resumes_at: int | None = field(default=None, compare=False)  # the step of its checkpoint, if any

    @property
    def pack_id(self) -> str:
        return "pack-" + short_id(",".join(t.trial_id for t in self.trials))


# A pack's step costs at most about one step of the paper's UNet at 80x80, batch 512 (20.1 GFLOP
# per image, forward and backward): a model that size fills a GPU alone; smaller ones share one.
MAX_PACK_STEP_FLOPS = 20.1e9 * 512


def schedule_of(spec: StudySpec, trial: Trial) -> tuple:
    """What models must share to share a pack: the architecture and the settings given per N."""
    return trial.architecture.name, tuple(sorted(spec.training.per_train_size(trial.n).items()))


def model_cost(spec: StudySpec, trial: Trial, costs: dict) -> float:
    """A model's training FLOPs (all its steps, forward and backward): its share of the study's work;
    kept in `costs` by `schedule_of`: models of one schedule cost the same, and counting a model's
    FLOPs runs it."""
    if (key := schedule_of(spec, trial)) not in costs:
        arch, schedule = trial.architecture, spec.training.per_train_size(trial.n)
        per_image = training_flops_per_image(build_model(arch.kind, **arch.params),
                                             (1, spec.image_size, spec.image_size))
        costs[key] = per_image * schedule["batch_size"] * schedule["steps"]
    return costs[key]


def costliest_first(spec: StudySpec, packs: list[Pack], costs: dict) -> list[Pack]:
    """`packs` in the order the workers should take them: the costliest first, as a long pack
    started last would leave the other workers idle (stable: ties keep their order)."""
    return sorted(packs, key=lambda pack: -model_cost(spec, pack.trials[0], costs) * len(pack.trials))


def models_per_pack(spec: StudySpec, group: list[Trial], cost: float, trial_share: float,
                    concurrency: int) -> int:
    """How many models of one schedule go into a pack: the spec's `models_per_pack`, else as many
    as a pack's step allows (MAX_PACK_STEP_FLOPS), and among those the larger of
    - enough packs to keep every concurrent trial busy on this schedule alone, and
    - as many as fit one trial's fair share of the whole study (`trial_share` FLOPs): with several
      schedules there are packs enough for every trial already, and fewer, bigger packs pay the
      worker group's start (30-40 s on 2 busy CPU cores) fewer times."""
    if spec.resources.models_per_pack is not None:
        return spec.resources.models_per_pack
    step_flops = cost / spec.training.steps_for(group[0].n)
    by_step = math.floor(MAX_PACK_STEP_FLOPS / step_flops)
    return max(1, min(by_step, len(group), max(math.ceil(len(group) / concurrency), math.floor(trial_share / cost))))


def plan_packs(spec: StudySpec, trials: list[Trial], concurrency: int, costs: dict | None = None) -> list[Pack]:
    """Packs of `trials`: models of one schedule (`schedule_of`), in the study's order,
    `models_per_pack` at a time; the costliest pack first. `costs`: see `model_cost`."""
    costs = {} if costs is None else costs
    groups: dict[tuple, list[Trial]] = {}
    for trial in trials:
        groups.setdefault(schedule_of(spec, trial), []).append(trial)
    trial_share = sum(model_cost(spec, group[0], costs) * len(group) for group in groups.values()) / concurrency
    packs = []
    for group in groups.values():
        k = models_per_pack(spec, group, model_cost(spec, group[0], costs), trial_share, concurrency)
        packs += [Pack(tuple(group[i:i + k])) for i in range(0, len(group), k)]
    return costliest_first(spec, packs, costs)


def max_concurrent(spec: StudySpec, cluster: dict | None) -> int:
    """Trials that fit side by side: each needs `workers` × (cpus, gpus); its driver needs neither.

    `cluster=None` (an autoscaling cluster, whose size now says nothing) trusts the spec's cap.
    """
    resources, workers = spec.resources, spec.training.workers
    if cluster is None:
        return resources.max_concurrent_trials
    fits = math.floor((cluster.get("CPU", 0) + 1e-9) / (workers * resources.cpus_per_trial))
    if resources.gpus_per_trial > 0:
        fits = min(fits, math.floor((cluster.get("GPU", 0) + 1e-9) / (workers * resources.gpus_per_trial)))
    return max(1, min(fits, resources.max_concurrent_trials))


def ray_storage(store: StudyStore) -> dict:
    """Ray Tune / Train storage under the results, through the store's own filesystem, so a URI's
    query parameters (endpoint, scheme) reach Ray exactly as given."""
    return {"storage_path": store.path("ray"), "storage_filesystem": store.fs}


def train_study(spec: StudySpec, store: StudyStore, state: StudyState, prepared: dict[str, dict],
                local_ray: bool, tracker: StudyTracker, verbose: bool = False) -> set[str]:
    """Train every model of the study that has no model file yet, pack by pack, with a Tune grid,
    each model's progress streamed to its MLflow run; returns the ids of the models trained now
    (the store is the ground truth: a pack that failed before its first report has no config in
    Tune's results). `prepared`: each folder dataset's pool, which the packs read and each model
    beginning training on it keeps (`PreparedDatasets.cache`). `local_ray`:
    the study's own Ray on this machine (a fixed size, no dashboard) rather than a cluster's.
    `verbose` lets Tune print its own status too."""
    concurrency = max_concurrent(spec, ray.cluster_resources() if local_ray else None)
    packs = packs_to_train(spec, store, state.trials, state.trained, concurrency)
    payloads = {pack.pack_id: {"spec": spec, "pack": pack, "results": store.results, "local_ray": local_ray,
                               "prepared": prepared,
                               "trained": {t.trial_id for t in pack.trials} & state.trained}
                for pack in packs}
    sizes = "/".join(map(str, sorted({len(p.trials) for p in packs})))
    todo = {t.trial_id for p in packs for t in p.trials} - state.trained
    log.info(f"[train] {len(todo)} models to train in {len(packs)} pack(s) of {sizes}, "
             f"{min(concurrency, len(packs))} at a time")
    for pack in packs:
        if pack.resumes_at is not None:
            log.info(f"[train] {pack.pack_id} resumes at step {pack.resumes_at}/"
                     f"{spec.training.steps_for(pack.trials[0].n)}, its last checkpoint")
    progress = TrainProgress(spec, {p.pack_id: p for p in packs}, tracker, state.trained)
    experiment = f"train-{spec.name}-{int(time.time())}"  # studies may share a results folder
    _drop_grid_records(store, spec.name)  # one an interrupted run left (Tune writes it again while it stops)
    tuner = ray.tune.Tuner(
        ray.tune.with_resources(ray.tune.with_parameters(tune_trial, payloads=payloads),
                                {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY}),
        param_space={"pack_id": ray.tune.grid_search(list(payloads))},
        tune_config=ray.tune.TuneConfig(max_concurrent_trials=concurrency),
        run_config=ray.tune.RunConfig(name=experiment, verbose=1 if verbose else 0,
                                      callbacks=[progress],
                                      # a trial whose driver died with its node starts again, and its
                                      # TorchTrainer (same name, same storage) resumes from the checkpoint
                                      failure_config=ray.tune.FailureConfig(max_failures=spec.resources.max_failures),
                                      **ray_storage(store)),
    )
    try:
        tuner.fit()
    finally:
        progress.close()
        _drop_grid_records(store, spec.name)
    trained = trained_models(store)
    # this run's packs whose models are all saved, and any left aside for sharing a model with one
    for pack_id in recorded_packs(store, {t.trial_id for t in state.trials}, trained)[1]:
        drop_pack(store, pack_id)
    return todo & trained


def _drop_grid_records(store: StudyStore, study: str) -> None:
    """Tune's records of the study's training grids (ray/train-<study>-<time>) go: they serve a
    Tuner.restore the study never asks for (a pack resumes from its own run, ray/<pack id>)."""
    try:
        for info in store.fs.get_file_info(pafs.FileSelector(store.path("ray"), allow_not_found=True)):
            if info.type == pafs.FileType.Directory and info.base_name.startswith(f"train-{study}-"):
                store.fs.delete_dir(info.path)
    except OSError:  # the store did not answer: a folder left over costs only space
        pass


def drop_pack(store: StudyStore, pack_id: str) -> None:
    """A pack no run will resume (its models all saved): its record and its checkpoints go. Ray
    Train keeps a pack's last two, every model's weights and Adam state in each: at the paper's
    sizes that is gigabytes per pack, and 70% of the smoke study's folder."""
    store.fs.delete_file(store.path(pack_path(pack_id)))
    try:
        store.fs.delete_dir(store.path(pack_run_dir(pack_id)))
    except FileNotFoundError:  # a pack whose models were all saved before its first checkpoint
        pass


def packs_to_train(spec: StudySpec, store: StudyStore, trials: list[Trial], trained: set[str],
                   concurrency: int) -> list[Pack]:
    """The packs that train the study's models without a model file: each recorded pack a run
    resumes (from its checkpoints), as it was, and the models no such pack holds, packed among
    themselves (new ones get their records here, for the next run and for `status`); the costliest
    first. A recorded pack whose models are all saved goes."""
    by_id = {t.trial_id: t for t in trials}
    recorded, ended = recorded_packs(store, by_id.keys(), trained)
    for pack_id in ended:
        drop_pack(store, pack_id)
    resumed = [Pack(tuple(by_id[trial_id] for trial_id in members), resume_step(store, pack_id))
               for pack_id, members in recorded.items()]
    held = {t.trial_id for p in resumed for t in p.trials}
    costs = {}
    new = plan_packs(spec, [t for t in trials if t.trial_id not in trained | held], concurrency, costs)
    for p in new:
        store.write_bytes(pack_path(p.pack_id), json.dumps([t.trial_id for t in p.trials]).encode())
    return costliest_first(spec, resumed + new, costs)


def register_trained(spec: StudySpec, tables: StudyTables, trials: list[Trial]) -> None:
    """The rows of trained models in `trials` and `train_curves`, from their training records."""
    rows, curves = [], []
    for trial in trials:
        if (record := tables.store.read_if_present(training_record_path(trial.trial_id))) is None:
            raise UserInputError(f"{tables.store.uri(model_path(trial.trial_id))} has no training record beside it: "
                                 f"delete its folder to train that model again")
        record = json.loads(record)
        rows.append({**trial.as_row(), "steps": record["steps"], "final_loss": record["losses"][-1][1],
                     "num_parameters": record["num_parameters"], "train_seconds": record["train_seconds"],
                     "resumed_from_step": record["resumed_from"], "device": record["device"],
                     # relative to the results folder, so the folder can move
                     "workers": record["workers"], "model_path": model_path(trial.trial_id),
                     # train_seconds is the pack's: its models trained in the same steps, so each
                     # model's share is the pack's time over its models
                     "model_train_seconds": record["train_seconds"] / record["pack_size"],
                     "pack_id": record["pack_id"], "pack_size": record["pack_size"]})
        curves += [{"study_id": spec.name, "trial_id": trial.trial_id, "step": step, "loss": loss}
                   for step, loss in record["losses"]]
    tables.put("train_curves", curves)
    tables.put("trials", rows)


class TrainProgress(ray.tune.Callback):
    """The training stage as it happens, on the driver: a progress bar of the study's training
    steps, a line per pack every PACK_LINE_EVERY_S (how far, its losses as min / median / max,
    images/s and, on a GPU of known peak, MFU), and every report forwarded to the models' MLflow runs."""

    PACK_LINE_EVERY_S = 10.0

    def __init__(self, spec: StudySpec, packs: dict[str, Pack], tracker: StudyTracker, trained: set[str]):
        self.packs, self.tracker, self.trained = packs, tracker, trained  # `trained`: saved before this run
        self.steps = {pack_id: spec.training.steps_for(pack.trials[0].n) for pack_id, pack in packs.items()}
        # the last step each pack reported (or resumes from: the bar counts the steps still to go)
        self.reached = {pack_id: pack.resumes_at or 0 for pack_id, pack in packs.items()}
        self.bar = StageProgress("train", sum(self.steps[p] - self.reached[p] for p in packs), "step")
        self.last_print: dict[str, float] = {}

    def __getstate__(self) -> dict:
        # Tune saves its run configuration, callbacks included, for a restore this study never asks
        # for (it resumes from its own store): the live tracker and progress bar stay out of it.
        return {**self.__dict__, "tracker": None, "bar": None}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.tracker.training_started(self.packs[trial.config["pack_id"]].trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        pack_id = trial.config["pack_id"]
        step = result.get("step")
        if "losses" not in result or step is None:
            return
        self.tracker.log_training(self.packs[pack_id].trials, step, result)
        if step <= self.reached[pack_id]:  # the same step again, with its checkpoint
            return
        self.bar.update(step - self.reached[pack_id])
        self.reached[pack_id] = step
        now, steps = time.monotonic(), self.steps[pack_id]
        if now - self.last_print.get(pack_id, 0) < self.PACK_LINE_EVERY_S and step != steps:
            return
        self.last_print[pack_id] = now
        speed = f", {result['images_per_s']:,.0f} img/s" + (f", MFU {result['mfu']:.1%}" if "mfu" in result else "")
        log.info(f"[train] {pack_id}: step {step}/{steps} {loss_summary(result['losses'])}{speed}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.tracker.flush(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        # the trial's exception as Tune keeps it (and `ResultGrid.errors` gives it), read from the
        # driver's copy: the one in the study's storage may not be synced yet
        pickled, text = trial.pickled_error_file, trial.error_file
        reason = failure_reason(cloudpickle.loads(Path(pickled).read_bytes()) if pickled and Path(pickled).exists()
                                else Path(text).read_text() if text and Path(text).exists() else None)
        pack = self.packs[trial.config["pack_id"]]
        models = ", ".join(f"{t.dataset.name} N={t.n} pair={t.pair} {t.split} seed={t.seed}" for t in pack.trials)
        log.info(f"[train] FAILED: {pack.pack_id} {pack.trials[0].architecture.name} [{models}]: {reason}")
        for model in pack.trials:
            if model.trial_id not in self.trained:  # a resumed pack's model saved before stays as it was
                self.tracker.model_failed(model, f"training: {reason}")

    def close(self) -> None:
        self.tracker.flush(force=True)
        self.bar.close()
