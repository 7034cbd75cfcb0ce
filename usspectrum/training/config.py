"""What defines a training run: :class:`TrainConfig` (every option of
``usspectrum train``, with its default and help), and the learning-rate
schedule and per-epoch seeds derived from it."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

from ..errors import UsageError
from ..io.identity import differences
from ..models import KINDS, model_defaults

KIND_PREFIX = {"us": "us_", "slimmable": "s_", "individual": ""}
SCHEDULES = ("cosine", "linear")


@dataclass
class TrainConfig:
    """Everything that defines a training run (the CLI's options)."""

    kind: str = field(default="us", metadata={"help": 'us (sandwich rule, inplace distillation), slimmable (all switches, switchable BN) or individual.'})
    model: str = field(default="mobilenet_v1", metadata={"help": 'Model family (the kind picks its us_/s_/plain builder).'})
    data: str = field(default="", metadata={"help": "ImageFolder root with train/ and val/, a CIFAR-10 python folder, or 'digits'."})
    out: str = field(default="model.pt", metadata={"help": 'Checkpoint to write (after every epoch; progress inside an epoch in OUT.partial.pt).'})
    epochs: int = field(default=10, metadata={"help": 'Epochs the schedule spans.'})
    batch_size: int = field(default=128, metadata={"help": 'Images per step.'})
    lr: float = field(default=0.1, metadata={"help": 'Peak learning rate (SGD with Nesterov momentum).'})
    momentum: float = field(default=0.9, metadata={"help": 'SGD momentum.'})
    weight_decay: float = field(default=5e-4, metadata={"help": 'Weight decay, not applied to depthwise convs, BN and biases.'})
    schedule: str = field(default="cosine", metadata={"help": 'Decay after the warm-up: cosine or linear, to 0.'})
    warmup_epochs: float = field(default=1.0, metadata={"help": 'Epochs of linear warm-up.'})
    cycles: int = field(default=1, metadata={"help": 'Warm restarts: warm-up and decay repeat this many times, each over epochs / cycles epochs. A finished E-epoch run trains on with --resume --epochs 2E --cycles 2.'})
    label_smoothing: float = field(default=0.0, metadata={"help": 'Label smoothing of the cross-entropy with the labels.'})
    num_sample: int = field(default=4, metadata={"help": 'US sandwich size: largest, smallest and n-2 random widths.'})
    width_range: tuple[float, float] | None = field(default=None, metadata={"help": "US: smallest and largest trained width [default: the family's, v1 0.25 1.0, v2 0.35 1.0]."})
    inplace_distill: bool = field(default=True, metadata={"help": "US: the smaller widths learn from the largest width's predictions."})
    distill_weight: float = field(default=0.5, metadata={"help": "US: weight of inplace distillation in the small widths' loss, the rest from the labels (1 = the paper's pure distillation)."})
    distill_ramp: float = field(default=0.0, metadata={"help": 'US: epochs over which that weight rises linearly from 0.'})
    nonuniform: bool = field(default=False, metadata={"help": 'US: random sandwich members draw a width per layer.'})
    average_output: bool = field(default=False, metadata={"help": "US: scale each conv's output by full / active input channels (output averaging, the US-Nets paper's Table 1)."})
    switches: tuple[float, ...] | None = field(default=None, metadata={"help": "S-Net widths [default: the family's, v1 0.25 0.5 0.75 1.0, v2 0.35 0.5 0.75 1.0]."})
    image_size: int | None = field(default=None, metadata={"help": "Input side length [default: the images']."})
    stem: str | None = field(default=None, metadata={"help": 'imagenet or cifar [default: cifar below 64 px].'})
    repeats: tuple[int, ...] | None = field(default=None, metadata={"help": "Blocks per stage for a shallower net [default: the paper's, v1 1,2,2,6,2; v2 1,2,3,4,3,3,1]."})
    flip: bool = field(default=True, metadata={"help": 'Random horizontal flips (off for digits).'})
    train_images: int | None = field(default=None, metadata={"help": 'Train on a seeded subset of train/ [default: all].'})
    val_images: int | None = field(default=1000, metadata={"help": 'Val images of the per-epoch check (all if val/ has fewer).'})
    calib_images: int = field(default=500, metadata={"help": 'BN calibration images of the per-epoch check (all if train/ has fewer).'})
    eval_every: int = field(default=1, metadata={"help": 'Epochs between per-epoch checks.'})
    eval_widths: tuple[float, ...] | None = field(default=None, metadata={"help": 'Widths of the per-epoch check, every kind calibrated; the log gains a top1_<width> column each [default: the smallest and largest trained widths, only US-Nets calibrated].'})
    checkpoint_minutes: float = field(default=5.0, metadata={"help": 'Minutes between progress saves inside an epoch.'})
    seed: int = field(default=0, metadata={"help": 'Seed of the initial weights, data order, augmentation and sandwich widths.'})
    device: str = field(default="cpu", metadata={"help": 'cpu, cuda or cuda:N.'})
    workers: int | None = field(default=None, metadata={"help": 'Data-loading processes [default: cores - 1, at most 4].'})
    threads: int | None = field(default=None, metadata={"help": 'torch CPU threads [default: all cores].'})
    resume: bool = field(default=False, metadata={"help": 'Continue OUT from where it stopped (its last epoch, or inside one).'})
    progress: bool = field(default=True, metadata={"help": 'Show progress bars.'})
    stop_after: int | None = field(default=None, metadata={"help": 'Pause after this many epochs (the schedule still spans --epochs; --resume continues).'})
    skip_bad_images: bool = field(default=False, metadata={"help": 'Leave out image files that cannot be decoded (checked first), warn with their paths and count them in the log.'})

    # Fields that change what is trained: a resumed run must agree on them.
    RECIPE = ("kind", "model", "epochs", "batch_size", "lr", "momentum", "weight_decay",
              "schedule", "warmup_epochs", "cycles", "label_smoothing", "num_sample", "width_range",
              "inplace_distill", "distill_weight", "distill_ramp", "nonuniform",
              "average_output", "switches", "image_size", "stem", "repeats", "flip",
              "train_images", "seed")
    # What checkpoints written before a recipe field existed were trained with.
    LEGACY = {"distill_weight": 1.0, "distill_ramp": 0.0, "average_output": False, "cycles": 1}
    # Fields that set only the schedule's length: see :func:`recipe_differences`.
    LENGTH = ("epochs", "cycles")

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
        for name in ("epochs", "cycles", "batch_size", "eval_every", "calib_images"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.epochs % self.cycles:
            raise UsageError(f"--epochs {self.epochs} is not a whole number of --cycles "
                             f"{self.cycles}; make --epochs a multiple of --cycles")
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


def recipe_differences(ours: dict, theirs: dict) -> list[str]:
    """The recipe fields on which a run with recipe ``theirs`` cannot go on
    as one with recipe ``ours``. Epochs and cycles may differ while the
    cycle length agrees: the first cycles of both schedules are then the
    same steps, so a finished run extends by further warm restarts (or a
    2-cycle run stops after its first) exactly as if planned that way."""
    theirs = {**TrainConfig.LEGACY, **theirs}
    differ = differences(ours, theirs)
    length = set(TrainConfig.LENGTH)
    if differ and set(differ) <= length:
        try:
            same_cycle = (float(ours["epochs"]) / float(ours["cycles"])
                          == float(theirs["epochs"]) / float(theirs["cycles"]))
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            same_cycle = False
        if same_cycle:
            return []
    return differ


def lr_factor(step: int, total: int, warmup: int, schedule: str, cycles: int = 1) -> float:
    """Linear warm-up to 1, then cosine or linear decay to 0; with
    ``cycles`` > 1 that repeats every ``total / cycles`` steps."""
    if cycles > 1:
        length = total // cycles
        step, total = step % length, length
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return max(0.0, 1 - progress)


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + stream) % (2**63 - 1)
