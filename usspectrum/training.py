"""Training US-Nets, 4-switch S-Nets and individual baselines.

One step function per kind of model (:func:`us_step`, :func:`slimmable_step`,
:func:`individual_step`); everything else (data, optimizer, schedule,
checkpoints, resume, logging) is shared by :func:`train`.

Resume is exact: the data order, the augmentation and the sandwich widths of
epoch ``e`` are drawn from generators seeded by ``(seed, e)``, and the
optimizer and schedule are restored from the checkpoint of the last finished
epoch, so a resumed run repeats what the uninterrupted run would have done.
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .allocator import keep_freed_memory
from .calibration import calibrate, clear_bn_stats
from .checkpoint import read_checkpoint, save_checkpoint
from .data import (ImageSpec, SeededSamples, calibration_images, class_names, eval_transform,
                   first_image_size, fitted_count, make_loader, open_split, seeded_subset,
                   train_transform, warn_skipped, without_bad_images)
from .distributed import (GlobalBatchShard, all_sum, barrier, check_world, context, local_device,
                          on_main)
from .errors import USSpectrumError, UsageError
from .evaluate import evaluate
from .layers import SlimBatchNormBase, SlimConv2d, set_sync_group
from .memory_batches import MemoryBatches
from .models import KINDS, create_model, model_defaults
from .results import RowWriter, atomic_write_bytes
from .width import WidthConfig

KIND_PREFIX = {"us": "us_", "slimmable": "s_", "individual": ""}
SCHEDULES = ("cosine", "linear")
LOG_COLUMNS = ["epoch", "lr", "loss", "images_per_s", "seconds", "smallest", "top1_smallest",
               "largest", "top1_largest", "val_images", "skipped_images"]


@dataclass
class TrainConfig:
    """Everything that defines a training run (the CLI's options)."""

    kind: str = "us"
    model: str = "mobilenet_v1"
    data: str = ""
    out: str = "model.pt"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    num_sample: int = 4
    width_range: tuple[float, float] | None = None  # None: the model family's (v1 0.25-1.0)
    inplace_distill: bool = True
    distill_weight: float = 0.5  # half distillation, half labels: see README "Training"
    distill_ramp: float = 0.0
    nonuniform: bool = False
    average_output: bool = False
    switches: tuple[float, ...] | None = None  # None: the family's (v1 0.25/0.5/0.75/1.0)
    image_size: int | None = None
    stem: str | None = None
    repeats: tuple[int, ...] | None = None
    flip: bool = True
    train_images: int | None = None
    val_images: int | None = 1000
    calib_images: int = 500
    eval_every: int = 1
    # widths of the per-epoch val check (None: the smallest and largest trained
    # widths, US-Nets calibrated, the others on their tracked statistics); when
    # set, every kind is calibrated at each and the log gains top1_<width> columns
    eval_widths: tuple[float, ...] | None = None
    checkpoint_minutes: float = 5.0  # mid-epoch progress file (<out>.partial.pt)
    seed: int = 0
    device: str = "cpu"
    workers: int | None = None
    threads: int | None = None
    resume: bool = False
    progress: bool = True
    stop_after: int | None = None  # pause after this many epochs (the schedule spans `epochs`)
    skip_bad_images: bool = False

    # Fields that change what is trained: a resumed run must agree on them.
    RECIPE = ("kind", "model", "epochs", "batch_size", "lr", "momentum", "weight_decay",
              "schedule", "warmup_epochs", "label_smoothing", "num_sample", "width_range",
              "inplace_distill", "distill_weight", "distill_ramp", "nonuniform",
              "average_output", "switches", "image_size", "stem", "repeats", "flip",
              "train_images", "seed")
    # What checkpoints written before a recipe field existed were trained with.
    LEGACY = {"distill_weight": 1.0, "distill_ramp": 0.0, "average_output": False}

    def resolved(self) -> "TrainConfig":
        """This config with the model family's default width range and
        switches filled in (MobileNet v1: 0.25-1.0, v2: 0.35-1.0)."""
        if self.kind not in KINDS:
            raise UsageError(f"unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        fill = {}
        for field_name, kind in (("width_range", "us"), ("switches", "slimmable")):
            if getattr(self, field_name) is None:
                arch = KIND_PREFIX[kind] + self.arch.removeprefix(KIND_PREFIX[self.kind])
                fill[field_name] = tuple(model_defaults(arch)[field_name])
        return dataclasses.replace(self, **fill)

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.width_range is None or self.switches is None:
            raise UsageError("width_range and switches must be set; call TrainConfig.resolved()")
        lo, hi = self.width_range
        if not (0 < lo <= 1 and 0 < hi <= 1):
            raise UsageError(f"--width-range must lie in (0, 1], got {lo} {hi}")
        if lo > hi:
            raise UsageError(f"--width-range {lo} {hi} is inverted; give the smaller width first")
        if not self.switches or any(not 0 < s <= 1 for s in self.switches):
            raise UsageError(f"--switches must be widths in (0, 1], got {list(self.switches)}")
        if self.average_output and self.kind != "us":
            raise UsageError("--average-output applies to US-Nets only (--kind us)")
        if self.distill_ramp < 0:
            raise UsageError("--distill-ramp must be >= 0 epochs")
        if not 0 <= self.distill_weight <= 1:
            raise UsageError("--distill-weight must lie in [0, 1]")
        if self.num_sample < 2:
            raise UsageError("--num-sample must be at least 2 (the largest and smallest widths)")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"--schedule must be one of {', '.join(SCHEDULES)}")
        if self.eval_widths is not None and any(not 0 < w <= 1 for w in self.eval_widths):
            raise UsageError(f"--eval-widths must be widths in (0, 1], got {list(self.eval_widths)}")
        if self.checkpoint_minutes <= 0:
            raise UsageError("--checkpoint-minutes must be > 0")
        for name in ("epochs", "batch_size", "eval_every", "calib_images"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise UsageError("--lr must be > 0, --weight-decay >= 0, --label-smoothing in [0, 1)")

    def distill_weight_at(self, step: int, steps_per_epoch: int) -> float:
        """Weight of inplace distillation (vs labels) for the non-largest
        widths at 0-based global ``step``: ``distill_weight``, reached by a
        linear rise over the first ``distill_ramp`` epochs."""
        if not self.inplace_distill:
            return 0.0
        ramp = self.distill_ramp * steps_per_epoch
        return self.distill_weight * (1.0 if ramp <= 0 else min(1.0, (step + 1) / ramp))

    def recipe(self) -> dict:
        d = asdict(self)
        return {k: (list(d[k]) if isinstance(d[k], (tuple, list)) else d[k]) for k in self.RECIPE}

    @property
    def arch(self) -> str:
        base = self.model
        for prefix in ("us_", "s_"):
            base = base.removeprefix(prefix)
        return KIND_PREFIX[self.kind] + base

    @property
    def trained_widths(self) -> tuple[float, float]:
        """(smallest, largest) width this kind trains."""
        if self.kind == "us":
            return tuple(self.width_range)
        if self.kind == "slimmable":
            return min(self.switches), max(self.switches)
        return 1.0, 1.0


# --- the three kinds of step -------------------------------------------------

def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets (inplace distillation)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class SandwichSampler:
    """Widths of one US training step: largest, smallest and ``n - 2``
    random ones (one ratio per layer when ``nonuniform``)."""

    def __init__(self, width_range: Sequence[float], num_sample: int, num_layers: int,
                 nonuniform: bool, rng: random.Random) -> None:
        self.lo, self.hi = width_range
        self.num_sample, self.num_layers = num_sample, num_layers
        self.nonuniform, self.rng = nonuniform, rng

    def draw(self) -> list[WidthConfig]:
        widths = [WidthConfig(self.hi), WidthConfig(self.lo)]
        for _ in range(self.num_sample - 2):
            if self.nonuniform:
                ratios = [self.rng.uniform(self.lo, self.hi) for _ in range(self.num_layers)]
                widths.append(WidthConfig.per_layer(ratios))
            else:
                widths.append(WidthConfig(self.rng.uniform(self.lo, self.hi)))
        return widths


def distill_loss(logits: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor,
                 criterion: Callable, weight: float) -> torch.Tensor:
    """Loss of a non-largest sandwich width: ``weight`` x inplace distillation
    from the largest width's soft targets + ``(1 - weight)`` x the label loss
    (each term alone at weight 1 or 0)."""
    if weight >= 1:
        return soft_cross_entropy(logits, soft)
    if weight <= 0:
        return criterion(logits, labels)
    return weight * soft_cross_entropy(logits, soft) + (1 - weight) * criterion(logits, labels)


def us_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
            widths: Sequence[WidthConfig], criterion: Callable,
            distill: bool | float) -> list[float]:
    """Sandwich rule: the largest width learns from the labels, every other
    width from its detached softmax with weight ``distill`` (True = 1: pure
    inplace distillation; False = 0: labels only; see :func:`distill_loss`)."""
    weight = float(distill)
    losses = []
    model.set_width(widths[0])
    logits = model(images)
    loss = criterion(logits, labels)
    loss.backward()
    losses.append(loss.item())
    soft = F.softmax(logits.detach(), dim=1)
    for width in widths[1:]:
        model.set_width(width)
        loss = distill_loss(model(images), labels, soft, criterion, weight)
        loss.backward()
        losses.append(loss.item())
    return losses


def slimmable_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   switches: Sequence[float], criterion: Callable) -> list[float]:
    """Every switch, each from the labels (Slimmable Networks)."""
    losses = []
    for width in sorted(switches, reverse=True):
        model.set_width(width)
        loss = criterion(model(images), labels)
        loss.backward()
        losses.append(loss.item())
    return losses


def individual_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    criterion: Callable) -> list[float]:
    model.set_width(1.0)
    loss = criterion(model(images), labels)
    loss.backward()
    return [loss.item()]


class SandwichLoss(nn.Module):
    """Every width of one training step in a single forward, returning the
    per-width losses. Under torchrun the model is trained through
    ``DistributedDataParallel(SandwichLoss(...))``: one forward and one
    backward per step, so DDP averages the summed gradient of all widths
    once. The losses are those of :func:`us_step`, :func:`slimmable_step`
    and :func:`individual_step`."""

    def __init__(self, model: nn.Module, kind: str, criterion: Callable, distill: bool | float,
                 switches: Sequence[float]) -> None:
        super().__init__()
        self.model, self.kind, self.criterion = model, kind, criterion
        self.distill, self.switches = distill, tuple(switches)

    def forward(self, images: torch.Tensor, labels: torch.Tensor,
                widths: Sequence[WidthConfig] | None = None) -> torch.Tensor:
        if self.kind == "us":
            self.model.set_width(widths[0])
            logits = self.model(images)
            losses = [self.criterion(logits, labels)]
            soft = F.softmax(logits.detach(), dim=1)
            for width in widths[1:]:
                self.model.set_width(width)
                losses.append(distill_loss(self.model(images), labels, soft, self.criterion,
                                           float(self.distill)))
        elif self.kind == "slimmable":
            losses = []
            for width in sorted(self.switches, reverse=True):
                self.model.set_width(width)
                losses.append(self.criterion(self.model(images), labels))
        else:
            self.model.set_width(1.0)
            losses = [self.criterion(self.model(images), labels)]
        return torch.stack(losses)


# --- shared plumbing -----------------------------------------------------------

def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on depthwise convs, BN parameters and biases."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            exempt = (isinstance(module, (SlimBatchNormBase, nn.BatchNorm2d))
                      or (isinstance(module, SlimConv2d) and module.depthwise)
                      or name == "bias")
            (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up to 1, then cosine or linear decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return max(0.0, 1 - progress)


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + stream) % (2**63 - 1)


@dataclass
class TrainResult:
    model: nn.Module
    log: pd.DataFrame
    checkpoint: Path
    step_widths: list = field(default_factory=list)


def _log_path(out: Path) -> Path:
    return out.with_name(out.stem + "-log.csv")


def _progress_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.pt")


def _log_columns(config: TrainConfig) -> list[str]:
    return LOG_COLUMNS + [f"top1_{w:g}" for w in (config.eval_widths or ())]


class SkipBatches:
    """A batch sampler without its first ``skip`` batches (a resumed epoch)."""

    def __init__(self, batches, skip: int) -> None:
        self.batches, self.skip = batches, skip

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            if i >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.skip)


@dataclass
class EpochTally:
    """What an epoch has done so far: batches, images, summed loss, seconds."""

    batches: int = 0
    images: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0

    def add(self, images: int, loss_sum: float) -> None:
        self.batches += 1
        self.images += images
        self.loss_sum += loss_sum


class EpochProgress:
    """Mid-epoch checkpoints (``<out>.partial.pt``): weights, optimizer,
    schedule, the sandwich sampler's and torch's random states and the
    epoch's tally, written every ``checkpoint_minutes``, so an interrupted
    epoch resumes at its next batch and repeats what the uninterrupted run
    would have done. One process only (under torchrun, epochs are the unit)."""

    def __init__(self, path: Path, config: TrainConfig, ctx) -> None:
        self.path, self.config = path, config
        self.enabled = not ctx.enabled
        self.every = config.checkpoint_minutes * 60
        self.last = time.perf_counter()

    def maybe_save(self, epoch: int, tally: EpochTally, seconds: float, model, optimizer,
                   scheduler, sampler: SandwichSampler) -> None:
        if not self.enabled or time.perf_counter() - self.last < self.every:
            return
        state = {"recipe": self.config.recipe(), "epoch": epoch,
                 "tally": [tally.batches, tally.images, tally.loss_sum, tally.seconds + seconds],
                 "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "sampler_rng": sampler.rng.getstate(), "torch_rng": torch.get_rng_state()}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.path, buffer.getvalue())
        self.last = time.perf_counter()

    def resume(self, epoch: int, model, optimizer, scheduler,
               sampler: SandwichSampler) -> EpochTally:
        """The tally of ``epoch`` from a progress file made during it (and
        the training state restored from it), else a fresh tally."""
        if not (self.enabled and self.path.exists()):
            return EpochTally()
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a file cut short by the interruption: redo the epoch
            warnings.warn(f"ignoring unreadable {self.path} ({type(exc).__name__}); "
                          f"epoch {epoch + 1} starts again")
            return EpochTally()
        if state.get("epoch") != epoch or state.get("recipe") != self.config.recipe():
            return EpochTally()
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.rng.setstate(_as_rng_state(state["sampler_rng"]))
        torch.set_rng_state(state["torch_rng"])
        batches, images, loss_sum, seconds = state["tally"]
        return EpochTally(int(batches), int(images), float(loss_sum), float(seconds))


def _as_rng_state(state) -> tuple:
    """``random.Random.setstate`` wants tuples; a round trip may give lists."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def train(config: TrainConfig | None = None, **overrides) -> TrainResult:
    """Train one model as ``config`` says; checkpoints after every epoch."""
    config = dataclasses.replace(config or TrainConfig(), **overrides).resolved()
    config.validate()
    out = Path(config.out)
    if config.resume and not out.exists() and not _progress_path(out).exists():
        raise USSpectrumError(f"--resume: {out} does not exist yet; drop --resume to start")
    keep_freed_memory()
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    device = torch.device(local_device(config.device))
    ctx = context(device)
    check_world(ctx, str(device))

    # data
    raw_train = open_split(config.data, "train")
    size = config.image_size or first_image_size(raw_train)
    spec = ImageSpec.for_size(size)
    stem = config.stem or ("cifar" if size < 64 else "imagenet")
    classes = class_names(raw_train)
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

    # model and optimizer
    kwargs: dict = {"num_classes": len(classes), "stem": stem}
    if config.repeats is not None:
        kwargs["repeats"] = tuple(config.repeats)
    if config.kind == "us":
        kwargs["width_range"] = tuple(config.width_range)
        if config.average_output:
            kwargs["average_output"] = True
    elif config.kind == "slimmable":
        kwargs["switches"] = tuple(config.switches)
    torch.manual_seed(config.seed)  # the initial weights are part of the recipe
    model = create_model(config.arch, **kwargs).to(device)
    memory_format = _training_memory_format(device)
    model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(param_groups(model, config.weight_decay), lr=config.lr,
                                momentum=config.momentum, nesterov=config.momentum > 0)
    steps_per_epoch = len(GlobalBatchShard(len(train_set), config.batch_size, 0, ctx))
    total = steps_per_epoch * config.epochs
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, config.schedule))
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    start_epoch = 0
    log_writer = on_main(lambda: RowWriter(_log_path(out), _log_columns(config),
                                           required=("epoch",)), ctx)
    progress = EpochProgress(_progress_path(out), config, ctx)
    if config.resume:
        # every process reads the checkpoint (under torchrun --out must be on shared storage)
        if out.exists() or not progress.path.exists():
            start_epoch = _restore(out, config, model, optimizer, scheduler, device, classes)
        if ctx.is_main:
            _truncate_log(log_writer, start_epoch)
    elif ctx.is_main:
        log_writer.path.unlink(missing_ok=True)
        progress.path.unlink(missing_ok=True)
    step_loss = SandwichLoss(model, config.kind, criterion, config.inplace_distill, config.switches)
    ddp = None
    if ctx.enabled:
        # batch statistics over the global batch, gradients averaged by DDP
        set_sync_group(model, dist.group.WORLD)
        ddp = nn.parallel.DistributedDataParallel(
            step_loss, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False)

    step_widths: list = []
    dtype = next(model.parameters()).dtype  # float32 unless the caller changed the default
    lo, hi = config.trained_widths
    end_epoch = config.epochs if config.stop_after is None else min(config.epochs,
                                                                     config.stop_after)
    for epoch in range(start_epoch, end_epoch):
        torch.manual_seed(epoch_seed(config.seed, epoch, 0))
        sampler = SandwichSampler(config.width_range, config.num_sample, len(model.slots),
                                  config.nonuniform, random.Random(epoch_seed(config.seed, epoch, 1)))
        train_set.seed = epoch_seed(config.seed, epoch, 3)
        batches = GlobalBatchShard(len(train_set), config.batch_size,
                                   epoch_seed(config.seed, epoch, 2), ctx)
        tally = progress.resume(epoch, model, optimizer, scheduler, sampler) if config.resume \
            else EpochTally()
        if memory is not None:
            memory.seed = train_set.seed
            loader = memory.batches(SkipBatches(batches, tally.batches))
        else:
            loader = make_loader(train_set, config.batch_size, config.workers,
                                 batch_sampler=SkipBatches(batches, tally.batches))
        model.train()
        started = time.perf_counter()
        bar = tqdm(loader, total=len(batches), initial=tally.batches, unit="batch", leave=False,
                   desc=f"{config.kind} epoch {epoch + 1}/{config.epochs}",
                   disable=not (config.progress and ctx.is_main))
        for batch_index, (images, labels) in enumerate(bar, start=tally.batches):
            images = images.to(device, dtype).contiguous(memory_format=memory_format)
            labels = labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            widths = sampler.draw() if config.kind == "us" else None
            if widths is not None:
                step_widths.append([str(w) for w in widths])
            count = labels.numel()
            distill = config.distill_weight_at(epoch * steps_per_epoch + batch_index,
                                               steps_per_epoch)
            step_loss.distill = distill
            if ddp is not None:
                losses, count = _distributed_step(ddp, images, labels, widths, ctx)
            elif config.kind == "us":
                losses = us_step(model, images, labels, widths, criterion, distill)
            elif config.kind == "slimmable":
                losses = slimmable_step(model, images, labels, config.switches, criterion)
            else:
                losses = individual_step(model, images, labels, criterion)
            optimizer.step()
            scheduler.step()
            tally.add(count, losses[0] * count)
            rate = tally.images / (tally.seconds + time.perf_counter() - started)
            bar.set_postfix(loss=f"{losses[0]:.3f}", img_s=f"{rate:.0f}")
            progress.maybe_save(epoch, tally, time.perf_counter() - started, model, optimizer,
                                scheduler, sampler)
        bar.close()
        seconds = tally.seconds + time.perf_counter() - started
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
               "loss": round(tally.loss_sum / max(1, tally.images), 5),
               "images_per_s": round(tally.images / seconds, 2), "seconds": round(seconds, 2),
               "smallest": lo, "largest": hi, "val_images": len(val_set),
               "skipped_images": len(skipped)}
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            row.update(_quick_eval(model, config, calib_set, val_set, device))
        model.set_width(1.0)
        if ctx.is_main:
            _save(model, out, config, classes, spec, optimizer, scheduler, epoch + 1, row)
            log_writer.append(row)
            progress.path.unlink(missing_ok=True)
        barrier(ctx)
        if config.progress and ctx.is_main:
            tqdm.write(f"epoch {epoch + 1}: loss {row['loss']:.4f}, {row['images_per_s']:.1f} img/s, "
                       f"top1 {row.get('top1_smallest', float('nan')):.2f}% @ {lo}, "
                       f"{row.get('top1_largest', float('nan')):.2f}% @ {hi}")
    log = on_main(lambda: log_writer.existing(), ctx)
    set_sync_group(model, None)
    return TrainResult(model.eval(), log, out, step_widths)


def _training_memory_format(device: torch.device) -> torch.memory_format:
    """Channels-last on the CPU, where oneDNN's convolutions and
    :mod:`usspectrum.kernels` want it (see ``benchmarks/bench_train.py``)."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def _distributed_step(ddp: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      widths, ctx) -> tuple[list[float], int]:
    """One step of one process under torchrun. Each loss is the mean over
    this process's share of the global batch; scaling it by
    ``world * local / global`` makes DDP's average of gradients the gradient
    of the mean over the global batch, even when the shares differ by one."""
    local = labels.numel()
    total = int(all_sum(torch.tensor([float(local)], device=images.device)).item())
    losses = ddp(images, labels, widths)
    (losses.sum() * (ctx.world * local / total)).backward()
    return [float(v) for v in losses.detach().cpu()], total


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


def _save(model, out, config, classes, spec, optimizer, scheduler, epochs_done, row) -> None:
    record = {"recipe": config.recipe(), "epochs_done": epochs_done, "data": str(config.data),
              "last_epoch": {k: v for k, v in row.items() if v is not None}}
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epochs_done": epochs_done}
    save_checkpoint(model, out, class_names=classes, image=spec, train=record,
                    extra={"train_state": state})


def _restore(out: Path, config: TrainConfig, model, optimizer, scheduler, device,
             classes: Sequence[str] = ()) -> int:
    if not out.exists():
        raise USSpectrumError(f"--resume: {out} does not exist yet; drop --resume to start")
    saved = read_checkpoint(out)
    record, state = saved.get("train", {}), saved.get("train_state")
    if state is None or "recipe" not in record:
        raise USSpectrumError(f"--resume: {out} holds no training state; train into a new --out")
    ours = config.recipe()
    # fields added since the checkpoint was written: what it was trained with
    theirs = {**TrainConfig.LEGACY, **record["recipe"]}
    differ = [k for k in ours if ours[k] != theirs.get(k)]
    if differ:
        detail = ", ".join(f"{k}={theirs.get(k)!r} (now {ours[k]!r})" for k in differ[:4])
        raise UsageError(f"--resume: {out} was trained with another config: {detail}; "
                         "use the same options or another --out")
    saved_classes = list(saved.get("class_names", []))
    if classes and saved_classes and saved_classes != list(classes):
        raise UsageError(f"--resume: {out} was trained on other classes ({len(saved_classes)} "
                         f"vs {len(classes)} in {config.data}); use the same --data or another "
                         "--out")
    model.load_state_dict(saved["state_dict"])
    model.to(device)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["epochs_done"])


def _truncate_log(writer: RowWriter, epochs_done: int) -> None:
    if not writer.path.exists():
        return
    log = pd.read_csv(writer.path)
    log = log[log["epoch"] <= epochs_done]
    writer.path.unlink()
    for row in log.to_dict(orient="records"):
        writer.append(row)
