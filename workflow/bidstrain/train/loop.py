"""The training loop: read it top to bottom in :func:`train` and :func:`run_epochs`.

Set-up (:func:`_train`): the run's identity, the data and the plan, the model, optimizer
and schedule, the state of the newest checkpoint when it belongs to the same run (else the
folder's checkpoints are set aside: :mod:`.checkpoint`), then the epochs. One optimizer
step is :func:`bidstrain.train.step.optimizer_step`; where training stands is a
:class:`~bidstrain.train.state.TrainState`; metric records go to a
:class:`~bidstrain.train.metrics.MetricsSink`, written at logging steps.

Rank 0 holds the experiment's lock (:mod:`.lock`) for the whole run, so two trainers never
write the same checkpoint directory; when it cannot take it, every rank stops.

Stopping (:mod:`.stop`): SIGTERM, SIGUSR1 and SIGINT set a flag; at the next step boundary every
rank agrees to stop, rank 0 writes a checkpoint, and the process exits with
:data:`~.stop.EXIT_INTERRUPTED` (75, ``EX_TEMPFAIL``). Rerunning the same command (or requeueing
the job) resumes from the checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from bidstrain.config import TrainConfig, to_plain
from bidstrain.errors import BidstrainError
from bidstrain.io.atomic import atomic_path
from bidstrain.modalities import MODALITIES, MODEL_INPUTS
from bidstrain.train import checkpoint, description, distributed, validity
from bidstrain.train.data import (
    StoreLayout,
    VolumeDataset,
    buffer_bytes,
    dataset_statistics,
    make_loader,
    volume_dataset,
)
from bidstrain.train.lock import ExperimentLock
from bidstrain.train.losses import baseline_loss
from bidstrain.train.metrics import (
    MetricsSink,
    learning_summary,
    progress_line,
    read_records,
    summary_lines,
)
from bidstrain.train.model import MultiModalAutoencoder, build_module
from bidstrain.train.out_of_memory import out_of_memory_explained
from bidstrain.train.sampler import ModalityBatchSampler, batch_sampler
from bidstrain.train.schedule import build_scheduler, planned_total_steps
from bidstrain.train.state import TrainState
from bidstrain.train.step import StepResult, Trainer, accumulation_groups, optimizer_step
from bidstrain.train.stop import StopSignals, TestStops
from bidstrain.train.tracking import open_trackers
from bidstrain.train.windows import shuffle_time

LOG = logging.getLogger("bidstrain.train")


class Interrupted(Exception):
    """A stop signal (or a test stop hook) arrived; a checkpoint was written at ``step``."""

    def __init__(self, step: int):
        self.step = step
        super().__init__(f"interrupted at step {step}; checkpoint written, rerun to resume")


@dataclass(frozen=True)
class Outputs:
    """Where a run writes: the declared outputs and the checkpoint folder, and the
    parcellation ``model.json`` records (``{"name", "checksum"}``; None without one)."""

    model: Path
    model_json: Path
    metrics: Path
    checkpoints: Path
    parcellation: Mapping[str, str] | None = None
    stimuli: Mapping[str, Sequence[str]] | None = None  # {kind: [training aligned store]}


@dataclass
class Data:
    """The training batches and the plan they make."""

    dataset: VolumeDataset
    sampler: ModalityBatchSampler
    loader: torch.utils.data.DataLoader
    steps_per_epoch: int
    total_steps: int


def train(
    config: TrainConfig,
    stores: Mapping[str, Sequence[str]],
    validation_stores: Mapping[str, Sequence[str]],
    *,
    model_out: str | Path,
    metrics_out: str | Path,
    checkpoint_dir: str | Path,
    model_json_out: str | Path | None = None,
    world_size: int | None = None,
    tables: Sequence[str] = (),
    parcellation: Mapping[str, str] | None = None,
    stimuli: Mapping[str, Mapping[str, str]] | None = None,
) -> MultiModalAutoencoder:
    """Train the model on ``stores``, validating on ``validation_stores`` every epoch.

    Parameters
    ----------
    config : TrainConfig
        The ``train`` section of the validated workflow configuration.
    stores, validation_stores : mapping
        ``{modality: [store path, ...]}`` (the plan's training and validation stores).
    model_out, metrics_out : str or Path
        Final ``model.pt`` and ``metrics.jsonl`` (written by rank 0 at the end).
    checkpoint_dir : str or Path
        Checkpoints, the working metrics file and the experiment lock; the newest
        checkpoint there is resumed from when it belongs to the same run (same settings,
        world size, stores and store versions), else moved aside with the folder's
        contents (:func:`.checkpoint.set_aside`).
    model_json_out : str or Path, optional
        ``model.json`` (:mod:`.description`); by default beside ``model_out``.
    world_size : int, optional
        The world size the workflow planned; the run stops when the real one (from
        ``torchrun``'s ``WORLD_SIZE``) differs. Not checked when None.
    tables : sequence of str
        Normalize tables giving the stores' volume counts, so that no store is opened
        before it is read (stores in none are counted from their metadata).
    parcellation : mapping, optional
        ``{"name", "checksum"}`` of the atlas the plan found (``model.json`` records it).
    stimuli : mapping, optional
        ``{BOLD store: {kind: aligned store}}`` for the training and validation BOLD
        stores: the features of ``train.stimuli`` that come with their windows
        (:mod:`.stimulus_windows`).

    Returns
    -------
    MultiModalAutoencoder
        The trained model (on every rank).

    Raises
    ------
    Interrupted
        After a stop signal, once the checkpoint is written.
    BidstrainError
        Bad configuration, another world size than planned, a missing store, another
        trainer on the experiment, too many non-finite steps, a parameter
        without gradient under DDP, or (``train.learning.strict``, after writing the
        outputs) a modality whose validation loss did not beat its baseline.
    """
    context = distributed.init()
    lock = ExperimentLock(checkpoint_dir)
    try:
        if world_size is not None and world_size != context.world_size:
            raise BidstrainError(
                f"the workflow planned world size {world_size} (--world-size) but this run "
                f"has {context.world_size} rank(s) (WORLD_SIZE from torchrun): launch one "
                f"process per planned GPU, or make the plan match the launch"
            )
        hold_lock(lock, context)
        outputs = Outputs(
            model=Path(model_out),
            model_json=Path(model_json_out or Path(model_out).with_name("model.json")),
            metrics=Path(metrics_out),
            checkpoints=Path(checkpoint_dir),
            parcellation=parcellation,
        )
        return _train(config, stores, validation_stores, context, outputs, tables, stimuli)
    finally:
        lock.release()
        distributed.shutdown(context)


def hold_lock(lock: ExperimentLock, context: distributed.Context) -> None:
    """Rank 0 takes the experiment lock; every rank learns whether it did, so that none
    starts training when rank 0 could not."""
    failure = None
    if context.is_main:
        try:
            lock.acquire()
        except (BidstrainError, OSError) as error:
            failure = error
    if distributed.all_reduce_named({"failed": failure is not None}, context.device)["failed"]:
        raise failure or BidstrainError(
            f"rank 0 could not lock {lock.path} (see its message): not training"
        )


def _train(config, stores, validation_stores, context, outputs: Outputs, tables=(), stimuli=None):
    checkpoint_dir = outputs.checkpoints
    config.model.check_patch_grid(stores)
    torch.manual_seed(config.run.seed)  # initialization (token masks: mask_generator)
    data = training_data(config, stores, context, tables, stimuli)
    validation = validation_loader(config, validation_stores, context, tables, stimuli, data)
    held_out = validation.dataset.dataset if validation is not None else None
    features = {
        "training": stimulus_lists(data.dataset, stores),
        "validation": stimulus_lists(held_out, validation_stores),
    }
    run = checkpoint.run_identity(
        config,
        context.world_size,
        stores,
        validation_stores,
        features if config.model.stimuli else None,
    )
    config_hash = checkpoint.run_hash(run)
    run_record = {"run": run, "config_hash": config_hash}  # saved with every checkpoint
    outputs = dataclasses.replace(outputs, stimuli=features["training"])
    module, optimizer, scheduler = build_model(config, stores, data, context)
    state, resumed = resume(checkpoint_dir, run_record, context, module, optimizer, scheduler)
    model = module
    if context.distributed:
        model = DistributedDataParallel(
            module, find_unused_parameters=config.run.find_unused_parameters
        )
    trainer = Trainer(model, module, optimizer, scheduler, context, config)
    trackers = []
    if context.is_main:
        trackers = open_trackers(
            config.run.loggers,
            directory=outputs.model.parent,
            experiment=config.run.experiment,
            config_hash=config_hash,
            config=to_plain(config),
        )
    sink = MetricsSink(
        context.is_main, checkpoint_dir / "metrics.jsonl", state.step if resumed else None, trackers
    )
    sink.emit(plan_record(config, data, context, config_hash))
    loaders = [data.loader] if validation is None else [data.loader, validation]
    buffers = sum(buffer_bytes(loader, config) for loader in loaders)
    LOG.info(
        "training on %s, %d rank(s): %d samples %s, %d steps; loader batch buffers "
        "%.2f MB per rank (train.num_workers %d)",
        context.device,
        context.world_size,
        len(data.dataset),
        data.dataset.layout.counts(),
        data.total_steps,
        buffers / 1e6,
        config.loader.num_workers,
    )
    summary = None
    try:
        with out_of_memory_explained(module, config.loader.batch_size, "train.batch_size", "train"):
            run_epochs(trainer, state, data, validation, sink, checkpoint_dir, run_record)
        if context.is_main:
            trained = [*stores, *module.stimuli]
            summary = summarize(sink, config, trained, state, checkpoint_dir)
    finally:
        sink.close()
    if context.is_main:
        write_outputs(module, config, stores, state, config_hash, outputs)
        check_learning(summary, checkpoint_dir)
    return module


def summarize(sink: MetricsSink, config, modalities, state: TrainState, checkpoint_dir: Path):
    """Rank 0: the ``summary`` record from every validation of the run (resumed parts
    included: they are in the working metrics file), emitted and logged."""
    sink.flush()
    learning = config.learning
    summary = learning_summary(
        read_records(checkpoint_dir / "metrics.jsonl"),
        modalities=[m for m in MODEL_INPUTS if m in modalities],
        max_ratio=learning.max_ratio,
        strict=learning.strict,
        step=state.step,
    )
    sink.emit(summary)
    for line in summary_lines(summary):
        (LOG.info if line.endswith("learned") else LOG.warning)("%s", line)
    return summary


def check_learning(summary, checkpoint_dir: Path) -> None:
    """``train.learning.strict``: fail once the outputs are written when a modality did
    not beat its baseline.

    Raises
    ------
    BidstrainError
        Naming the modalities, their ratios and where the model stays for inspection
        (Snakemake removes the outputs of a failed job; the checkpoints stay).
    """
    failed = {m: v for m, v in summary["modalities"].items() if v["status"] == "fail"}
    if failed:
        listing = ", ".join(
            f"{m} (final {v['final']:.4g} vs baseline {v['baseline']:.4g}, ratio {v['ratio']:.3g})"
            for m, v in failed.items()
        )
        raise BidstrainError(
            f"the model did not learn: validation loss not below train.learning.max_ratio "
            f"{summary['max_ratio']} x the baseline (predicting the mean) for {listing}. "
            f"The model and metrics stay in {checkpoint_dir} (newest step-*.pt, metrics.jsonl) "
            "for inspection; set train.learning.strict: false to keep such a model"
        )


def run_epochs(trainer, state, data, validation, sink, checkpoint_dir, run_record) -> None:
    """Train from ``state`` to the end of the plan, checkpointing on the way (``run_record``:
    the run's :func:`~.checkpoint.run_identity` and its hash, saved with every checkpoint).

    Raises
    ------
    Interrupted
        After a stop (signal or test hook), once the checkpoint is written.
    """
    config, context = trainer.config, trainer.context
    accum, hooks = config.optimizer.grad_accum_steps, TestStops.from_environ()
    durations = deque(maxlen=20)  # of the last steps, for the progress line
    with StopSignals() as signals:
        while state.epoch < config.optimizer.epochs:
            data.sampler.set_epoch(state.epoch, start=state.position * accum)
            started = time.perf_counter()
            for group in accumulation_groups(data.loader, accum):
                at_log = (state.step + 1) % config.run.log_every == 0
                result = optimizer_step(
                    trainer,
                    group,
                    step=state.step + 1,
                    log_norms=at_log,
                    stop_requested=signals.requested,
                )
                state.record_step(result.skipped)
                durations.append(time.perf_counter() - started)
                started = time.perf_counter()
                emit_step(sink, result, state, durations[-1])
                if at_log or state.step == data.total_steps:
                    LOG.info(progress(result, state, data.total_steps, durations))
                    sink.flush()
                check_skips(config, result, state)
                if state.position == data.steps_per_epoch:
                    validate(trainer, validation, sink, state)
                    state.end_epoch()
                stop = result.stop_requested
                if hooks.stops_after(state.step):
                    sink.flush()
                    hooks.stop(state.step, signals, checkpoint_dir, context.is_main)
                    stop = True
                if state.step % config.run.checkpoint_every == 0 or stop:
                    save_checkpoint(trainer, state, sink, checkpoint_dir, run_record)
                if stop:
                    distributed.barrier(context)  # no rank exits before the checkpoint is written
                    raise Interrupted(state.step)
        if state.step % config.run.checkpoint_every != 0:
            save_checkpoint(trainer, state, sink, checkpoint_dir, run_record)


def resume(checkpoint_dir, run_record, context, module, optimizer, scheduler):
    """Load the newest checkpoint into the model, optimizer and schedule when it belongs to
    the run of ``run_record`` (its ``config_hash``), else set the folder's checkpoints aside
    (rank 0, once every rank has read them); the :class:`TrainState` to start from and
    whether it was resumed."""
    state = TrainState(world_size=context.world_size)
    saved = checkpoint.load_latest(checkpoint_dir)
    if saved is None or saved["config_hash"] != run_record["config_hash"]:
        distributed.barrier(context)
        if context.is_main:
            checkpoint.set_aside(checkpoint_dir, saved, run_record["run"])
        return state, False
    module.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    state.load_state_dict(saved["train_state"])
    LOG.info(
        "resumed from step %d (epoch %d, batch group %d)", state.step, state.epoch, state.position
    )
    return state, True


def save_checkpoint(
    trainer: Trainer, state: TrainState, sink: MetricsSink, directory: Path, run_record: dict
) -> None:
    """Rank 0 writes a checkpoint of ``state`` (see :mod:`.checkpoint` for what it holds),
    after the metrics: a run resumed from it finds every step up to it in the metrics."""
    sink.flush()
    if trainer.context.is_main:
        checkpoint.save(
            directory,
            {
                "model": trainer.module.state_dict(),
                "optimizer": trainer.optimizer.state_dict(),
                "scheduler": trainer.scheduler.state_dict(),
                "train_state": state.state_dict(),
                **run_record,
            },
        )


def write_outputs(module, config, stores, state: TrainState, config_hash, paths: Outputs):
    """The declared outputs: ``model.pt`` (with its description), ``model.json``
    (:mod:`.description`) and a copy of the working metrics file."""
    about = description.describe(
        module,
        config,
        stores,
        config_hash=config_hash,
        step=state.step,
        parcellation=paths.parcellation,
        stimuli=paths.stimuli,
    )
    with atomic_path(paths.model) as tmp:
        torch.save(
            {
                "model": module.state_dict(),
                "config": config.settings(),
                "step": state.step,
                "description": about,
            },
            tmp,
        )
    description.write(about, paths.model_json)
    with atomic_path(paths.metrics) as tmp:
        shutil.copyfile(paths.checkpoints / "metrics.jsonl", tmp)
    LOG.info("wrote %s, %s and %s", paths.model, paths.model_json, paths.metrics)


def stimulus_lists(dataset: VolumeDataset | None, stores) -> dict[str, list[str]]:
    """``{kind: [aligned store, ...]}`` of a dataset's BOLD stores (none without
    ``train.stimuli``): part of the run's identity, so that new features start a new
    run."""
    if dataset is None or dataset.stimuli is None:
        return {}
    return dataset.stimuli.lists(stores["bold"])


def training_data(config, stores, context: distributed.Context, tables=(), stimuli=None) -> Data:
    """The training loader and plan; the batch order depends on (seed, epoch) only, so
    resuming is exact."""
    if config.model.stimuli and not stores.get("bold"):
        raise BidstrainError(
            f"train.stimuli is {list(config.model.stimuli)} but no training store is BOLD: "
            "the stimulus features come with BOLD windows (set train.stimuli: [])"
        )
    dataset = volume_dataset(stores, config, tables, stimuli)
    log_left_out(dataset.layout)
    if len(dataset) == 0:
        raise BidstrainError(
            "no training samples: the training stores are empty, or every BOLD run is "
            "shorter than train.window"
        )
    sampler = batch_sampler(
        dataset.layout, config, rank=context.rank, world_size=context.world_size
    )
    accum = config.optimizer.grad_accum_steps
    return Data(
        dataset=dataset,
        sampler=sampler,
        loader=make_loader(dataset, sampler, config, device=context.device),
        steps_per_epoch=math.ceil(sampler.n_batches / accum),
        total_steps=planned_total_steps(
            batches_per_epoch=sampler.n_batches,
            epochs=config.optimizer.epochs,
            grad_accum_steps=accum,
        ),
    )


def log_left_out(layout: StoreLayout) -> None:
    """Log the BOLD frames no window reads, as the checks count them
    (:mod:`bidstrain.checks.windows`): frames left out of the stores' ``data``
    (:attr:`StoreLayout.invalid`), and segments (runs, or pieces of runs between such
    frames) shorter than ``train.window``, per store with any, and in total."""
    left = layout.left_out()
    stores = np.flatnonzero(left["segments"])
    for s in stores:
        pieces = layout.segment_length[layout.segment_store == s]
        LOG.warning(
            "%s: %d of its %d frames are in no window (segments %s; train.window %d)",
            layout.paths[s],
            left["frames"][s],
            layout.volumes[s],
            pieces.tolist(),
            layout.window[s],
        )
    if stores.size or layout.invalid.any():
        LOG.warning(
            "BOLD frames in no window: %d of %d stores too short for train.window (%d frames, "
            "%d stores with no window at all); %d frames left out of the stores' time grids",
            stores.size,
            int((layout.modality == MODALITIES.index("bold")).sum()),
            int(left["frames"].sum()),
            int((layout.samples[stores] == 0).sum()),
            int(layout.invalid.sum()),
        )


def build_model(config, stores, data: Data, context: distributed.Context):
    """The model, AdamW and the schedule, built before any state is loaded into them."""
    stats = dataset_statistics(data.dataset) if config.loss.stats == "dataset" else None
    parcels = {}
    if config.model.bold_input == "parcels" and "bold" in data.dataset.shapes:
        (parcels["n_parcels"],) = data.dataset.shapes["bold"]
    windows = data.dataset.stimuli
    features = windows.n_features if windows is not None else None
    module = build_module(config, stores, stats, **parcels, stimuli=features).to(context.device)
    module.encoder.checkpointing = config.run.activation_checkpointing
    if config.run.compile:
        module.encoder.compile_layers()
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=config.optimizer.lr, weight_decay=config.optimizer.weight_decay
    )
    scheduler = build_scheduler(
        optimizer,
        total_steps=data.total_steps,
        warmup_steps=config.optimizer.warmup_steps,
        min_lr_ratio=config.optimizer.min_lr_ratio,
    )
    return module, optimizer, scheduler


def plan_record(config, data: Data, context: distributed.Context, config_hash: str) -> dict:
    """The ``plan`` record that opens every run's metrics."""
    return {
        "kind": "plan",
        "total_steps": data.total_steps,
        "warmup_steps": config.optimizer.warmup_steps,
        "lr": config.optimizer.lr,
        "min_lr_ratio": config.optimizer.min_lr_ratio,
        "epochs": config.optimizer.epochs,
        "batches_per_epoch": data.sampler.n_batches,
        "grad_accum_steps": config.optimizer.grad_accum_steps,
        "world_size": context.world_size,
        "config_hash": config_hash,
    }


def emit_step(sink: MetricsSink, result: StepResult, state: TrainState, seconds: float) -> None:
    """The ``step`` record (and the ``grad_norms`` record at the logging interval); the
    epoch is the one the step belongs to."""
    sink.emit(
        {
            "kind": "step",
            "step": state.step,
            "epoch": state.epoch,
            "lr": result.lr,
            "loss": result.loss,
            "loss_per_modality": result.loss_per_modality,
            "dummy_loss": result.dummy_loss,
            "grad_norm": result.grad_norm,
            "skipped": result.skipped,
            "modalities": result.modalities,
            "samples_per_s": result.samples / seconds,
            "seconds_per_step": seconds,
        }
    )
    if result.module_norms is not None:
        sink.emit({"kind": "grad_norms", "step": state.step, "norms": result.module_norms})


def progress(result: StepResult, state: TrainState, total_steps: int, recent: deque) -> str:
    """The progress line of the job log (``recent``: durations of the last steps)."""
    return progress_line(
        step=state.step,
        total=total_steps,
        loss=result.loss,
        lr=result.lr,
        seconds_per_step=float(np.median(recent)),
        skipped=state.skipped_steps,
    )


def validation_loader(config, validation_stores, context, tables=(), stimuli=None, data=None):
    """Loader over the held-out stores (None when there are none).

    Raises
    ------
    BidstrainError
        When their stimulus features have other sizes than the training stores' (``data``).
    """
    stores = {m: paths for m, paths in validation_stores.items() if paths}
    if not stores:
        LOG.info("no validation stores (normalize.heldout selects no run): no validation loss")
        return None
    dataset = volume_dataset(stores, config, tables, stimuli)
    trained = data.dataset.stimuli if data is not None else None
    if dataset.stimuli is not None and trained is not None:
        for kind, n in dataset.stimuli.n_features.items():
            if trained.n_features.get(kind, n) != n:
                raise BidstrainError(
                    f"the validation runs' {kind} features have {n} columns, the training "
                    f"runs' {trained.n_features[kind]}: align every run with one setting"
                )
    sampler = batch_sampler(
        dataset.layout,
        config,
        batching="mixed",
        rank=context.rank,
        world_size=context.world_size,
        pad=False,  # each held-out sample scored once, whatever the world size
    )
    return make_loader(dataset, sampler, config, device=context.device, num_workers=0)


@torch.no_grad()
def validate(trainer: Trainer, loader, sink: MetricsSink, state: TrainState) -> None:
    """Per-modality loss on the held-out stores, and the baseline of the same loss
    (:func:`~bidstrain.train.losses.baseline_loss`: predicting the mean), recorded.

    No gradients. Both losses count the voxels (or parcels) that hold data only (not the
    zeros outside a store's mask, in the padding or of an empty parcel:
    :mod:`~bidstrain.train.validity`). With masking
    (``train.mask_ratio``), the same tokens are masked in every validation (a generator
    seeded by ``train.seed`` and the rank), and both losses count the masked tokens'
    voxels only: the model is scored on what it predicts from context.

    With BOLD windows (``train.window`` > 1) the BOLD loss is also computed on the same
    windows with their frames shuffled in time (:func:`~bidstrain.train.windows.
    shuffle_time`, seeded as the masks; the same masks): ``loss_shuffled_time`` (with the
    other modalities' losses as they are) and ``loss_shuffled_time_per_modality``
    (``validation/loss_shuffled_time`` in the trackers). A model that uses the order of
    frames does worse on them.
    """
    if loader is None:
        return
    module, context = trainer.module, trainer.context
    settings = module.loss_settings
    generator = torch.Generator().manual_seed(trainer.config.run.seed + context.rank)
    shuffling = torch.Generator().manual_seed(trainer.config.run.seed + context.rank)
    in_time = trainer.config.model.window > 1
    zero = torch.zeros((), dtype=torch.float64, device=context.device)
    sums: dict[str, torch.Tensor | float] = {}
    for modality in MODEL_INPUTS:
        sums[f"loss.{modality}"], sums[f"baseline.{modality}"] = zero, zero
        sums[f"shuffled.{modality}"] = zero
        sums[f"samples.{modality}"] = 0.0
    module.eval()
    for batch in loader:
        batch = {m: volume.to(context.device) for m, volume in batch.items()}
        masks = module.token_masks(batch, generator)
        output = module(batch, masks=masks)
        if in_time and "bold" in batch:
            shuffled = {**batch, "bold": shuffle_time(batch["bold"], shuffling)}
            loss = module(shuffled, masks=masks).loss_per_modality["bold"].double()
            sums["shuffled.bold"] = sums["shuffled.bold"] + batch["bold"].shape[0] * loss
        for modality, volume in validity.inputs(batch).items():
            n = volume.shape[0]
            baseline = baseline_loss(
                volume,
                normalize=settings.normalize,
                eps=settings.eps,
                target_stats=(settings.target_stats or {}).get(modality),
                where=output.voxel_masks.get(modality),
            )
            # (not +=: the sums start as one shared zero tensor)
            loss = output.loss_per_modality[modality].double()
            sums[f"loss.{modality}"] = sums[f"loss.{modality}"] + n * loss
            sums[f"baseline.{modality}"] = sums[f"baseline.{modality}"] + n * baseline.double()
            sums[f"samples.{modality}"] += n
    module.train()
    totals = distributed.all_reduce_named(sums, context.device)
    present = [m for m in MODEL_INPUTS if totals[f"samples.{m}"] > 0]
    per_modality = {m: totals[f"loss.{m}"] / totals[f"samples.{m}"] for m in present}
    baselines = {m: totals[f"baseline.{m}"] / totals[f"samples.{m}"] for m in present}
    weights = trainer.config.loss.weights
    loss = sum(weights.get(m, 1.0) * value for m, value in per_modality.items())
    record = {
        "kind": "validation",
        "step": state.step,
        "epoch": state.epoch,
        "loss": loss,
        "loss_per_modality": per_modality,
        "baseline_per_modality": baselines,
    }
    if in_time and "bold" in per_modality:
        shuffled = {**per_modality, "bold": totals["shuffled.bold"] / totals["samples.bold"]}
        record["loss_shuffled_time"] = sum(
            weights.get(m, 1.0) * value for m, value in shuffled.items()
        )
        record["loss_shuffled_time_per_modality"] = {"bold": shuffled["bold"]}
        LOG.info(
            "validation bold loss %.4f in time order, %.4f with frames shuffled in time",
            per_modality["bold"],
            shuffled["bold"],
        )
    sink.emit(record)
    sink.flush()
    if context.is_main:
        LOG.info(
            "validation after epoch %d: loss %.4f; %s",
            state.epoch,
            loss,
            ", ".join(
                f"{m} {per_modality[m]:.4f} (baseline {baselines[m]:.4f}, "
                f"ratio {_ratio(per_modality[m], baselines[m])})"
                for m in present
            ),
        )


def _ratio(loss: float, baseline: float) -> str:
    if not math.isfinite(baseline):
        return "n/a: a non-finite baseline (NaN or Inf in the validation data)"
    return f"{loss / baseline:.3f}" if baseline > 0 else "n/a: a baseline of 0"


def check_skips(config, result: StepResult, state: TrainState) -> None:
    """Stop on a non-finite step (``train.nonfinite: stop``) or after too many in a row."""
    if not result.skipped:
        return
    step, consecutive_skips = state.step, state.consecutive_skips
    LOG.warning(
        "step %d skipped: non-finite loss %s or gradient norm %s on some rank (%d in a row)",
        step,
        result.loss,
        result.grad_norm,
        consecutive_skips,
    )
    where = [m for m, loss in result.loss_per_modality.items() if not math.isfinite(loss)]
    if where:
        LOG.warning(
            "step %d: the loss of %s is not finite: NaN or Inf in its batch's data",
            step,
            ", ".join(where),
        )
    if config.run.nonfinite == "stop":
        named = f" (the loss of {', '.join(where)}: NaN or Inf in its data)" if where else ""
        raise BidstrainError(
            f"non-finite loss ({result.loss}) or gradient norm ({result.grad_norm}) at step "
            f"{step}{named} (train.nonfinite: stop; set it to skip to skip such steps)"
        )
    if consecutive_skips > config.run.max_consecutive_skips:
        raise BidstrainError(
            f"{consecutive_skips} consecutive steps up to step {step} had a non-finite loss or "
            f"gradient norm (last loss {result.loss}, grad norm {result.grad_norm}): the data "
            "or the learning rate is broken (lower train.lr, check the stores for NaN, or raise "
            "train.max_consecutive_skips)"
        )
