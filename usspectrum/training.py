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
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .calibration import calibrate, clear_bn_stats
from .checkpoint import read_checkpoint, save_checkpoint
from .data import (ImageSpec, class_names, eval_transform, first_image_size, make_loader,
                   open_split, seeded_subset, train_transform)
from .errors import USSpectrumError, UsageError
from .evaluate import evaluate
from .layers import SlimBatchNormBase, SlimConv2d
from .models import KINDS, create_model
from .results import RowWriter
from .width import WidthConfig

KIND_PREFIX = {"us": "us_", "slimmable": "s_", "individual": ""}
SCHEDULES = ("cosine", "linear")
LOG_COLUMNS = ["epoch", "lr", "loss", "images_per_s", "seconds", "smallest", "top1_smallest",
               "largest", "top1_largest", "val_images"]


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
    width_range: tuple[float, float] = (0.25, 1.0)
    inplace_distill: bool = True
    nonuniform: bool = False
    switches: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    image_size: int | None = None
    stem: str | None = None
    repeats: tuple[int, ...] | None = None
    flip: bool = True
    train_images: int | None = None
    val_images: int | None = 1000
    calib_images: int = 500
    eval_every: int = 1
    seed: int = 0
    device: str = "cpu"
    workers: int | None = None
    threads: int | None = None
    resume: bool = False
    progress: bool = True

    # Fields that change what is trained: a resumed run must agree on them.
    RECIPE = ("kind", "model", "epochs", "batch_size", "lr", "momentum", "weight_decay",
              "schedule", "warmup_epochs", "label_smoothing", "num_sample", "width_range",
              "inplace_distill", "nonuniform", "switches", "image_size", "stem", "repeats", "flip",
              "train_images", "seed")

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        lo, hi = self.width_range
        if not (0 < lo <= 1 and 0 < hi <= 1):
            raise UsageError(f"--width-range must lie in (0, 1], got {lo} {hi}")
        if lo > hi:
            raise UsageError(f"--width-range {lo} {hi} is inverted; give the smaller width first")
        if not self.switches or any(not 0 < s <= 1 for s in self.switches):
            raise UsageError(f"--switches must be widths in (0, 1], got {list(self.switches)}")
        if self.num_sample < 2:
            raise UsageError("--num-sample must be at least 2 (the largest and smallest widths)")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"--schedule must be one of {', '.join(SCHEDULES)}")
        for name in ("epochs", "batch_size", "eval_every", "calib_images"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise UsageError("--lr must be > 0, --weight-decay >= 0, --label-smoothing in [0, 1)")

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


def us_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
            widths: Sequence[WidthConfig], criterion: Callable, distill: bool) -> list[float]:
    """Sandwich rule: the largest width learns from the labels; with inplace
    distillation every other width learns from its detached softmax."""
    losses = []
    model.set_width(widths[0])
    logits = model(images)
    loss = criterion(logits, labels)
    loss.backward()
    losses.append(loss.item())
    soft = F.softmax(logits.detach(), dim=1)
    for width in widths[1:]:
        model.set_width(width)
        logits = model(images)
        loss = soft_cross_entropy(logits, soft) if distill else criterion(logits, labels)
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


def train(config: TrainConfig | None = None, **overrides) -> TrainResult:
    """Train one model as ``config`` says; checkpoints after every epoch."""
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    device = torch.device(config.device)

    # data
    raw_train = open_split(config.data, "train")
    size = config.image_size or first_image_size(raw_train)
    spec = ImageSpec.for_size(size)
    stem = config.stem or ("cifar" if size < 64 else "imagenet")
    classes = class_names(raw_train)
    train_set = seeded_subset(open_split(config.data, "train", train_transform(spec, config.flip)),
                              config.train_images, config.seed, "--train-images")
    val_set = open_split(config.data, "val", eval_transform(spec))
    if config.val_images is not None:
        val_set = seeded_subset(val_set, min(config.val_images, len(val_set)), config.seed,
                                "--val-images")
    calib_source = open_split(config.data, "train", eval_transform(spec))
    calib_set = seeded_subset(calib_source, min(config.calib_images, len(calib_source)),
                              config.seed + 1, "--calib-images")

    # model and optimizer
    kwargs: dict = {"num_classes": len(classes), "stem": stem}
    if config.repeats is not None:
        kwargs["repeats"] = tuple(config.repeats)
    if config.kind == "us":
        kwargs["width_range"] = tuple(config.width_range)
    elif config.kind == "slimmable":
        kwargs["switches"] = tuple(config.switches)
    torch.manual_seed(config.seed)  # the initial weights are part of the recipe
    model = create_model(config.arch, **kwargs).to(device)
    optimizer = torch.optim.SGD(param_groups(model, config.weight_decay), lr=config.lr,
                                momentum=config.momentum, nesterov=config.momentum > 0)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, config.schedule))
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    start_epoch = 0
    log_writer = RowWriter(_log_path(out), LOG_COLUMNS, required=("epoch",))
    if config.resume:
        start_epoch = _restore(out, config, model, optimizer, scheduler, device)
        _truncate_log(log_writer, start_epoch)
    elif log_writer.path.exists():
        log_writer.path.unlink()

    step_widths: list = []
    lo, hi = config.trained_widths
    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(epoch_seed(config.seed, epoch, 0))
        sampler = SandwichSampler(config.width_range, config.num_sample, len(model.slots),
                                  config.nonuniform, random.Random(epoch_seed(config.seed, epoch, 1)))
        loader = make_loader(train_set, config.batch_size, config.workers, shuffle=True,
                             generator=torch.Generator().manual_seed(epoch_seed(config.seed, epoch, 2)))
        model.train()
        started, images_seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(loader, desc=f"{config.kind} epoch {epoch + 1}/{config.epochs}", unit="batch",
                   disable=not config.progress, leave=False)
        for images, labels in bar:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            if config.kind == "us":
                widths = sampler.draw()
                step_widths.append([str(w) for w in widths])
                losses = us_step(model, images, labels, widths, criterion, config.inplace_distill)
            elif config.kind == "slimmable":
                losses = slimmable_step(model, images, labels, config.switches, criterion)
            else:
                losses = individual_step(model, images, labels, criterion)
            optimizer.step()
            scheduler.step()
            images_seen += labels.numel()
            loss_sum += losses[0] * labels.numel()
            rate = images_seen / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{losses[0]:.3f}", img_s=f"{rate:.0f}")
        bar.close()
        seconds = time.perf_counter() - started
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
               "loss": round(loss_sum / max(1, images_seen), 5),
               "images_per_s": round(images_seen / seconds, 2), "seconds": round(seconds, 2),
               "smallest": lo, "largest": hi, "val_images": len(val_set)}
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            row.update(_quick_eval(model, config, calib_set, val_set, device))
        model.set_width(1.0)
        _save(model, out, config, classes, spec, optimizer, scheduler, epoch + 1, row)
        log_writer.append(row)
        if config.progress:
            tqdm.write(f"epoch {epoch + 1}: loss {row['loss']:.4f}, {row['images_per_s']:.1f} img/s, "
                       f"top1 {row.get('top1_smallest', float('nan')):.2f}% @ {lo}, "
                       f"{row.get('top1_largest', float('nan')):.2f}% @ {hi}")
    log = log_writer.existing()
    return TrainResult(model.eval(), log, out, step_widths)


def _quick_eval(model, config, calib_set, val_set, device) -> dict:
    """Top-1 at the smallest and largest trained widths (US-Nets are
    calibrated first; the others use their tracked BN statistics)."""
    lo, hi = config.trained_widths
    widths = [lo, hi]
    if config.kind == "us":
        calibrate(model, make_loader(calib_set, 200, config.workers), widths, device)
    accuracy = evaluate(model, make_loader(val_set, 200, config.workers), widths, device)
    clear_bn_stats(model)  # sweeps calibrate with their own settings
    model.train()
    return {"top1_smallest": round(accuracy[str(WidthConfig(lo))].top1, 3),
            "top1_largest": round(accuracy[str(WidthConfig(hi))].top1, 3)}


def _save(model, out, config, classes, spec, optimizer, scheduler, epochs_done, row) -> None:
    record = {"recipe": config.recipe(), "epochs_done": epochs_done, "data": str(config.data),
              "last_epoch": {k: v for k, v in row.items() if v is not None}}
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epochs_done": epochs_done}
    save_checkpoint(model, out, class_names=classes, image=spec, train=record,
                    extra={"train_state": state})


def _restore(out: Path, config: TrainConfig, model, optimizer, scheduler, device) -> int:
    if not out.exists():
        raise USSpectrumError(f"--resume: {out} does not exist yet; drop --resume to start")
    saved = read_checkpoint(out)
    record, state = saved.get("train", {}), saved.get("train_state")
    if state is None or "recipe" not in record:
        raise USSpectrumError(f"--resume: {out} holds no training state; train into a new --out")
    ours = config.recipe()
    theirs = record["recipe"]
    differ = [k for k in ours if ours[k] != theirs.get(k)]
    if differ:
        detail = ", ".join(f"{k}={theirs.get(k)!r} (now {ours[k]!r})" for k in differ[:4])
        raise UsageError(f"--resume: {out} was trained with another config: {detail}; "
                         "use the same options or another --out")
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
