"""The training loop: :func:`train` opens the data, builds the model and
its optimizer, resumes or starts clean, then runs epochs (each: steps from
:mod:`.steps`, a val check, a checkpoint and a log row from :mod:`.progress`).
"""
from __future__ import annotations

import dataclasses
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..errors import USSpectrumError
from ..io.data import (ImageSpec, SeededSamples, calibration_images, class_names, eval_transform,
                       first_image_size, fitted_count, make_loader, open_split, seeded_subset,
                       train_transform, warn_skipped, without_bad_images)
from ..io.lock import exclusive_writer
from ..io.results import RowWriter
from ..models import create_model
from ..nn.bn_stats import clear_bn_stats
from ..nn.layers import set_sync_group
from ..nn.width import WidthConfig
from ..runtime.allocator import keep_freed_memory
from ..runtime.distributed import GlobalBatchShard, barrier, check_world, context, local_device, \
    on_main
from ..spectrum.calibration import calibrate
from ..spectrum.evaluate import evaluate
from .config import TrainConfig, epoch_seed, lr_factor
from .memory_batches import MemoryBatches
from .progress import (EpochProgress, EpochTally, SkipBatches, log_columns, log_path,
                       progress_path, restore_epoch, save_epoch, truncate_log)
from .steps import SandwichLoss, SandwichSampler, distributed_step, local_step, param_groups


@dataclass
class TrainResult:
    model: nn.Module
    log: pd.DataFrame
    checkpoint: Path
    step_widths: list = field(default_factory=list)


@dataclass
class TrainingData:
    """The images a run trains, checks and calibrates on."""

    train_set: SeededSamples
    val_set: Dataset
    calib_set: Dataset
    memory: MemoryBatches | None  # the training split decoded in memory, when small
    classes: list[str]
    spec: ImageSpec
    skipped: list[str]


def train(config: TrainConfig | None = None, **overrides) -> TrainResult:
    """Train one model as ``config`` says; checkpoints after every epoch
    (and every ``checkpoint_minutes`` inside one)."""
    config = dataclasses.replace(config or TrainConfig(), **overrides).resolved()
    config.validate()
    out = Path(config.out)
    if config.resume and not out.exists() and not progress_path(out).exists():
        raise USSpectrumError(f"--resume: {out} does not exist yet; drop --resume to start")
    keep_freed_memory()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(local_device(config.device))
    ctx = context(device)
    check_world(ctx, str(device))
    data = open_training_data(config, ctx)
    # a second run into the same checkpoint would interleave epochs and logs
    with exclusive_writer(out if ctx.is_main else None):
        run = Run(config, data, device, ctx)
        start = run.start()
        end = config.epochs if config.stop_after is None else min(config.epochs, config.stop_after)
        for epoch in range(start, end):
            run.end_epoch(epoch, run.train_epoch(epoch))
        return run.result()


def open_training_data(config: TrainConfig, ctx) -> TrainingData:
    """The training split (augmented, seeded per image), the val subset of
    the per-epoch check and its calibration images."""
    raw_train = open_split(config.data, "train")
    size = config.image_size or first_image_size(raw_train)
    spec = ImageSpec.for_size(size)
    train_set = SeededSamples(seeded_subset(
        open_split(config.data, "train", train_transform(spec, config.flip)),
        config.train_images, config.seed, "--train-images"))
    val_set = open_split(config.data, "val", eval_transform(spec))
    if config.val_images is not None:
        count = fitted_count(None, config.val_images, len(val_set), "--val-images",
                             f"{config.data}/val")
        val_set = seeded_subset(val_set, count, config.seed, "--val-images")
    calib_count = fitted_count(None, config.calib_images, len(raw_train), "--calib-images",
                               f"{config.data}/train")
    calib_set = calibration_images(config.data, spec, calib_count, config.seed + 1,
                                   flip=config.flip)
    skipped: list[str] = []
    if config.skip_bad_images:
        show = config.progress and ctx.is_main
        train_set.dataset, bad_train = without_bad_images(train_set.dataset, "training images",
                                                          show)
        val_set, bad_val = without_bad_images(val_set, "val images", show)
        calib_set, _ = without_bad_images(calib_set, "calibration images", show)  # within train
        skipped = bad_train + bad_val
        if ctx.is_main:
            warn_skipped(skipped, "images")
    # small images: decoded once, augmented in this process (no worker competing for the cores)
    memory = MemoryBatches.load(train_set.dataset, spec, config.flip,
                                key=(str(config.data), os.path.abspath(config.data),
                                     config.train_images, config.seed, len(train_set)))
    return TrainingData(train_set, val_set, calib_set, memory, class_names(raw_train), spec,
                        skipped)


def build_model(config: TrainConfig, data: TrainingData) -> nn.Module:
    """The untrained model of ``config`` for ``data``'s classes and image size."""
    kwargs: dict = {"num_classes": len(data.classes),
                    "stem": config.stem or ("cifar" if data.spec.image_size < 64 else "imagenet")}
    if config.repeats is not None:
        kwargs["repeats"] = tuple(config.repeats)
    if config.kind == "us":
        kwargs["width_range"] = tuple(config.width_range)
        if config.average_output:
            kwargs["average_output"] = True
    elif config.kind == "slimmable":
        kwargs["switches"] = tuple(config.switches)
    torch.manual_seed(config.seed)  # the initial weights are part of the recipe
    return create_model(config.arch, **kwargs)


class Run:
    """One training run's state: model, optimizer, schedule, log and progress."""

    def __init__(self, config: TrainConfig, data: TrainingData, device: torch.device,
                 ctx) -> None:
        self.config, self.data, self.device, self.ctx = config, data, device, ctx
        self.out = Path(config.out)
        self.memory_format = _training_memory_format(device)
        self.model = build_model(config, data).to(device).to(memory_format=self.memory_format)
        self.optimizer = torch.optim.SGD(param_groups(self.model, config.weight_decay),
                                         lr=config.lr, momentum=config.momentum,
                                         nesterov=config.momentum > 0)
        self.steps_per_epoch = len(GlobalBatchShard(len(data.train_set), config.batch_size, 0,
                                                    ctx))
        total = self.steps_per_epoch * config.epochs
        warmup = int(round(config.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, total, warmup, config.schedule, config.cycles))
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.log_writer = on_main(lambda: RowWriter(log_path(self.out), log_columns(config),
                                                    required=("epoch",)), ctx)
        self.progress = EpochProgress(progress_path(self.out), config, ctx)
        self.ddp = None
        self.step_widths: list = []

    def start(self) -> int:
        """Restore a resumed run (returns the epochs done) or clear old
        files; wrap the model for DDP under torchrun."""
        start_epoch = 0
        if self.config.resume:
            # every process reads the checkpoint (under torchrun --out must be on shared storage)
            if self.out.exists() or not self.progress.path.exists():
                start_epoch = restore_epoch(self.out, self.config, self.model, self.optimizer,
                                            self.scheduler, self.device, self.data.classes)
            if self.ctx.is_main:
                truncate_log(self.log_writer, start_epoch)
        elif self.ctx.is_main:
            self.log_writer.path.unlink(missing_ok=True)
            self.progress.path.unlink(missing_ok=True)
        if self.ctx.enabled:
            # batch statistics over the global batch, gradients averaged by DDP
            set_sync_group(self.model, dist.group.WORLD)
            step_loss = SandwichLoss(self.model, self.config.kind, self.criterion,
                                     self.config.inplace_distill, self.config.switches)
            self.ddp = nn.parallel.DistributedDataParallel(
                step_loss, broadcast_buffers=False,
                device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return start_epoch

    def train_epoch(self, epoch: int) -> dict:
        """The steps of ``epoch`` (from where a progress file left it); its log row."""
        config, data, model = self.config, self.data, self.model
        torch.manual_seed(epoch_seed(config.seed, epoch, 0))
        sampler = SandwichSampler(config.width_range, config.num_sample, len(model.slots),
                                  config.nonuniform,
                                  random.Random(epoch_seed(config.seed, epoch, 1)))
        data.train_set.seed = epoch_seed(config.seed, epoch, 3)
        batches = GlobalBatchShard(len(data.train_set), config.batch_size,
                                   epoch_seed(config.seed, epoch, 2), self.ctx)
        tally = (self.progress.resume(epoch, model, self.optimizer, self.scheduler, sampler)
                 if config.resume else EpochTally())
        left = SkipBatches(batches, tally.batches)
        if data.memory is not None:
            data.memory.seed = data.train_set.seed
            loader = data.memory.batches(left)
        else:
            loader = make_loader(data.train_set, config.batch_size, config.workers,
                                 batch_sampler=left)
        model.train()
        started = time.perf_counter()
        bar = tqdm(loader, total=len(batches), initial=tally.batches, unit="batch", leave=False,
                   desc=f"{config.kind} epoch {epoch + 1}/{config.epochs}",
                   disable=not (config.progress and self.ctx.is_main))
        for batch_index, (images, labels) in enumerate(bar, start=tally.batches):
            losses, count = self.step(epoch, batch_index, images, labels, sampler)
            tally.add(count, losses[0] * count)
            rate = tally.images / (tally.seconds + time.perf_counter() - started)
            bar.set_postfix(loss=f"{losses[0]:.3f}", img_s=f"{rate:.0f}")
            self.progress.maybe_save(epoch, tally, time.perf_counter() - started, model,
                                     self.optimizer, self.scheduler, sampler)
        bar.close()
        seconds = tally.seconds + time.perf_counter() - started
        lo, hi = config.trained_widths
        return {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"],
                "loss": round(tally.loss_sum / max(1, tally.images), 5),
                "images_per_s": round(tally.images / seconds, 2), "seconds": round(seconds, 2),
                "smallest": lo, "largest": hi, "val_images": len(data.val_set),
                "skipped_images": len(data.skipped)}

    def step(self, epoch: int, batch_index: int, images: torch.Tensor, labels: torch.Tensor,
             sampler: SandwichSampler) -> tuple[list[float], int]:
        """One optimizer step; the losses of its widths and its image count."""
        config = self.config
        dtype = next(self.model.parameters()).dtype  # float32 unless the caller changed it
        images = images.to(self.device, dtype).contiguous(memory_format=self.memory_format)
        labels = labels.to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        widths = sampler.draw() if config.kind == "us" else None
        if widths is not None:
            self.step_widths.append([str(w) for w in widths])
        distill = config.distill_weight_at(epoch * self.steps_per_epoch + batch_index,
                                           self.steps_per_epoch)
        count = labels.numel()
        if self.ddp is not None:
            self.ddp.module.distill = distill
            losses, count = distributed_step(self.ddp, images, labels, widths, self.ctx)
        else:
            losses = local_step(self.model, config.kind, images, labels, self.criterion, widths,
                                distill, config.switches)
        self.optimizer.step()
        self.scheduler.step()
        return losses, count

    def end_epoch(self, epoch: int, row: dict) -> None:
        """The val check, the checkpoint and the log row of a finished epoch."""
        config = self.config
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            row.update(_quick_eval(self.model, config, self.data.calib_set, self.data.val_set,
                                   self.device))
        self.model.set_width(1.0)
        if self.ctx.is_main:
            save_epoch(self.model, self.out, config, self.data.classes, self.data.spec,
                       self.optimizer, self.scheduler, epoch + 1, row)
            self.log_writer.append(row)
            self.progress.path.unlink(missing_ok=True)
        barrier(self.ctx)
        if config.progress and self.ctx.is_main:
            lo, hi = config.trained_widths
            tqdm.write(f"epoch {epoch + 1}: loss {row['loss']:.4f}, "
                       f"{row['images_per_s']:.1f} img/s, "
                       f"top1 {row.get('top1_smallest', float('nan')):.2f}% @ {lo}, "
                       f"{row.get('top1_largest', float('nan')):.2f}% @ {hi}")

    def result(self) -> TrainResult:
        log = on_main(lambda: self.log_writer.existing(), self.ctx)
        set_sync_group(self.model, None)
        return TrainResult(self.model.eval(), log, self.out, self.step_widths)


def _training_memory_format(device: torch.device) -> torch.memory_format:
    """Channels-last on the CPU, where oneDNN's convolutions and
    :mod:`usspectrum.nn.kernels` want it (see ``benchmarks/bench_train.py``)."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def _quick_eval(model, config, calib_set, val_set, device) -> dict:
    """Top-1 at the smallest and largest trained widths, and at
    ``config.eval_widths`` when set. Without ``eval_widths`` only US-Nets
    are calibrated (the others use their tracked BN statistics); with them,
    every kind is, as the sweeps do."""
    lo, hi = config.trained_widths
    extra = list(config.eval_widths or ())
    widths = list(dict.fromkeys([lo, hi, *extra]))
    dtype = next(model.parameters()).dtype

    def batches(dataset):
        return ((x.to(dtype), y) for x, y in make_loader(dataset, 200, config.workers))

    if config.kind == "us" or extra:
        calibrate(model, batches(calib_set), widths, device)
    accuracy = evaluate(model, batches(val_set), widths, device)
    clear_bn_stats(model)  # sweeps calibrate with their own settings
    model.train()
    row = {"top1_smallest": round(accuracy[str(WidthConfig(lo))].top1, 3),
           "top1_largest": round(accuracy[str(WidthConfig(hi))].top1, 3)}
    row.update({f"top1_{w:g}": round(accuracy[str(WidthConfig(w))].top1, 3) for w in extra})
    return row
