"""Commands that make models: train, demo."""
from __future__ import annotations

import click

from ..demo import run_demo
from ..models import KINDS
from ..training.config import SCHEDULES, TrainConfig
from ..training.loop import train as run_train
from .app import DISPLAY, check_device, cli, note, on_interrupt, parse_numbers, parse_repeats
from .options import build, setting, stack


def _train(name: str, *decls: str, **kw):
    return setting(TrainConfig, name, *decls, **kw)


def _tuple_or_none(values):
    return tuple(values) or None


@cli.command("train")
@stack(
    _train("kind", required=True, metavar="|".join(KINDS)),
    _train("model"),
    _train("data", required=True),
    _train("out", "-o", "--out", required=True),
    _train("epochs"), _train("batch_size"), _train("lr"), _train("momentum"),
    _train("weight_decay"),
    _train("schedule", type=click.Choice(SCHEDULES)),
    _train("warmup_epochs"), _train("cycles"), _train("label_smoothing"), _train("num_sample"),
    _train("width_range", type=float, nargs=2),
    _train("inplace_distill", "--inplace-distill/--no-inplace-distill", show_default=True),
    _train("distill_weight"), _train("distill_ramp"), _train("nonuniform"),
    _train("average_output"),
    _train("switches", type=float, multiple=True, convert=_tuple_or_none,
           help=TrainConfig.__dataclass_fields__["switches"].metadata["help"]
           + " Repeat the option: --switches 0.25 --switches 1.0."),
    _train("image_size"),
    _train("stem", type=click.Choice(["imagenet", "cifar"])),
    _train("repeats", type=str, metavar="N,N,...", convert=parse_repeats),
    _train("flip", "--no-flip", invert=True, help="No random horizontal flips (e.g. for digits)."),
    _train("train_images"), _train("val_images"), _train("calib_images"),
    _train("eval_every"),
    _train("eval_widths", type=str, metavar="W,W,...",
           convert=lambda text: tuple(sorted(parse_numbers(text, "--eval-widths"))) or None),
    _train("checkpoint_minutes"), _train("seed"),
    _train("device", convert=check_device),
    _train("workers"), _train("threads"), _train("resume"), _train("stop_after"),
    _train("skip_bad_images"),
    _train("progress", "--quiet", invert=True, help="No progress bars."),
)
def train_cmd(**kw) -> None:
    """Train a US-Net, a slimmable S-Net or an individual baseline.

    US-Nets: the sandwich rule with inplace distillation; S-Nets: every
    switch, switchable BN. A checkpoint and a log row after every epoch.

    \b
    Examples:
      usspectrum train --kind us --nonuniform --data ../shared/data/cifar10 -o us.pt
      usspectrum train --kind slimmable --switches 0.25 --switches 0.5 --switches 0.75 \\
          --switches 1.0 --data ../shared/data/cifar10 -o s.pt
      usspectrum train --kind individual --data digits --image-size 16 --no-flip -o ind.pt
      usspectrum train --kind us --data DIR -o us.pt --resume
    """
    config = build(TrainConfig, kw)
    on_interrupt(f"{config.out} holds the last finished epoch (and progress inside the next); "
                 "rerun with --resume to continue")
    result = run_train(config)
    click.echo(result.log.to_string(index=False))
    note(f"checkpoint: {result.checkpoint}")


@cli.command("demo")
@click.option("-o", "--out", default="usspectrum-demo", show_default=True)
@click.option("--epochs", type=int, default=15, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo_cmd(out: str, epochs: int, quiet: bool) -> None:
    """Train, sweep and plot three nets on bundled digits.

    Offline: a nonuniform US-Net, a 4-switch S-Net and an individual net on
    scikit-learn's handwritten digits, then the compare and slim-stage CSVs
    and plots in --out. A rerun resumes every finished step.

    \b
    Examples:
      usspectrum demo
      usspectrum demo --out demo --epochs 10
    """
    on_interrupt(f"finished steps are kept in {out}/; rerun the same command to resume")
    results = run_demo(out, epochs, progress=not quiet)
    click.echo(results["compare"][DISPLAY].to_string(index=False))
    click.echo(f"wrote {out}/compare.csv, {out}/compare.png, {out}/slim-stage.csv, "
               f"{out}/slim-stage.png (and .svg)", err=True)
