"""What a training run leaves on disk and picks up again: the checkpoint
after every epoch, the per-epoch log, and the progress file inside an epoch.

Resume is exact: the data order, the augmentation and the sandwich widths of
epoch ``e`` are drawn from generators seeded by ``(seed, e)``; the optimizer
and schedule come back from the checkpoint of the last finished epoch, or
from the progress file written inside the next one (with the random states
and the epoch's tally), so a resumed run repeats what the uninterrupted run
would have done, bit for bit.
"""
from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from ..errors import USSpectrumError, UsageError
from ..io.checkpoint import read_checkpoint, save_checkpoint
from ..io.results import RowWriter, atomic_write_bytes, write_table
from .config import TrainConfig, recipe_differences
from .steps import SandwichSampler

LOG_COLUMNS = ["epoch", "lr", "loss", "images_per_s", "seconds", "smallest", "top1_smallest",
               "largest", "top1_largest", "val_images", "skipped_images"]


def log_path(out: Path) -> Path:
    return out.with_name(out.stem + "-log.csv")


def progress_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.pt")


def log_columns(config: TrainConfig) -> list[str]:
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
        if state.get("epoch") != epoch or recipe_differences(self.config.recipe(),
                                                             state.get("recipe") or {}):
            return EpochTally()
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _rate_from_schedule(optimizer, scheduler)
        sampler.rng.setstate(_as_rng_state(state["sampler_rng"]))
        torch.set_rng_state(state["torch_rng"])
        batches, images, loss_sum, seconds = state["tally"]
        return EpochTally(int(batches), int(images), float(loss_sum), float(seconds))


def _as_rng_state(state) -> tuple:
    """``random.Random.setstate`` wants tuples; a round trip may give lists."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def save_epoch(model, out, config, classes, spec, optimizer, scheduler, epochs_done, row) -> None:
    record = {"recipe": config.recipe(), "epochs_done": epochs_done, "data": str(config.data),
              "last_epoch": {k: v for k, v in row.items() if v is not None}}
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epochs_done": epochs_done}
    save_checkpoint(model, out, class_names=classes, image=spec, train=record,
                    extra={"train_state": state})


def restore_epoch(out: Path, config: TrainConfig, model, optimizer, scheduler, device,
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
    differ = recipe_differences(ours, theirs)
    if differ:
        detail = ", ".join(f"{k}={theirs.get(k)!r} (now {ours[k]!r})" for k in differ[:4])
        fix = "use the same options or another --out"
        if set(differ) <= set(TrainConfig.LENGTH):
            cycle = int(theirs["epochs"]) // max(1, int(theirs["cycles"]))
            fix = (f"to train on with warm restarts keep {cycle} epochs per cycle "
                   f"(e.g. --epochs {2 * cycle} --cycles 2), or train into another --out")
        raise UsageError(f"--resume: {out} was trained with another config: {detail}; {fix}")
    if int(state["epochs_done"]) > config.epochs:
        raise UsageError(f"--resume: {out} has trained {state['epochs_done']} epochs, more than "
                         f"--epochs {config.epochs}; give --epochs {state['epochs_done']} or more")
    saved_classes = list(saved.get("class_names", []))
    if classes and saved_classes and saved_classes != list(classes):
        raise UsageError(f"--resume: {out} was trained on other classes ({len(saved_classes)} "
                         f"vs {len(classes)} in {config.data}); use the same --data or another "
                         "--out")
    model.load_state_dict(saved["state_dict"])
    model.to(device)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _rate_from_schedule(optimizer, scheduler)
    return int(state["epochs_done"])


def _rate_from_schedule(optimizer, scheduler) -> None:
    """Set the learning rate of the next step from this config's schedule:
    the saved one came from the old schedule, which differs when a finished
    run is extended by another cycle (its last rate was 0). Unchanged
    schedules give back the saved rate exactly (the same expression)."""
    rates = [base * factor(scheduler.last_epoch)
             for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates


def truncate_log(writer: RowWriter, epochs_done: int) -> None:
    """Drop log rows of epochs the checkpoint does not hold, in one atomic
    write (a kill meanwhile must not lose the rows that stay)."""
    if not writer.path.exists():
        return
    log = pd.read_csv(writer.path)
    if (log["epoch"] > epochs_done).any():
        write_table(log[log["epoch"] <= epochs_done], writer.path)
