"""The ``usspectrum`` command line: parses, calls the library, prints."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import pandas as pd

from . import __version__
from .allocator import keep_freed_memory
from .errors import USSpectrumError, UsageError
from .flops import flops_table
from .stored_calibration import calibrate_checkpoint
from .compare import compare as run_compare
from .compare import slim_stage as run_slim_stage
from .demo import run_demo
from .distributed import launched, local_device
from .export import FORMATS as EXPORT_FORMATS
from .models import create_model, list_models
from .plot import check_columns, plot_spectrum
from .results import write_table
from .greedy_search import GRANULARITIES, SearchSettings, budget_report
from .greedy_search import search as run_search
from .data import CALIB_AUGMENTS
from .spectrum import CALIBRATION_MODES, SweepSettings, default_widths
from .spectrum import sweep as run_sweep
from .training import TrainConfig
from .training import train as run_train
from .width import parse_width_list, stage_variants


def is_main() -> bool:
    """Rank 0 of a torchrun launch, or the only process."""
    return os.environ.get("RANK", "0") == "0" or not launched()


def note(message: str) -> None:
    """A status line on stderr, from rank 0 only under torchrun."""
    if is_main():
        click.echo(message, err=True)


WIDTHS_DEFAULT_HELP = ("the model's trained range in steps of 0.025, e.g. 0.25:1.0:0.025 for "
                       "MobileNet v1, 0.35:1.0:0.025 for v2")
DISPLAY = ["model", "width", "mflops", "params_m", "top1", "top5", "bn", "seconds"]


class BadUsage(click.ClickException):
    """A one-line usage error (exit 2) without click's usage banner."""

    exit_code = 2


class Group(click.Group):
    """Turns library errors into one-line messages: exit 2 for bad input,
    1 for everything else the user can fix."""

    def invoke(self, ctx: click.Context) -> Any:
        keep_freed_memory()
        if launched() and os.environ.get("RANK", "0") != "0":
            # under torchrun rank 0 prints; the others only report errors
            sys.stdout = open(os.devnull, "w")
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            raise BadUsage(str(exc)) from None
        except USSpectrumError as exc:
            raise click.ClickException(str(exc)) from None


def emit(df: pd.DataFrame, csv_path: str | None, as_json: bool) -> None:
    """Print ``df`` as a table (or JSON) and write it to ``csv_path``."""
    if csv_path:
        write_table(df, csv_path)
    if as_json:
        click.echo(json.dumps(df.to_dict(orient="records"), indent=2))
    else:
        click.echo(df.to_string(index=False))
    if csv_path:
        note(f"wrote {len(df)} rows to {csv_path}")


def parse_repeats(text: str | None) -> tuple[int, ...] | None:
    """``--repeats 1,1,2,1,1`` as block counts."""
    if text is None:
        return None
    try:
        return tuple(int(t) for t in text.replace(" ", ",").split(",") if t)
    except ValueError:
        raise UsageError(f"--repeats takes comma-separated block counts such as 1,2,2,6,2, "
                         f"got {text!r}") from None


def parse_stages(values: tuple[str, ...], num_stages: int | None) -> list[int]:
    """``--stage`` values as stage numbers (``num_stages``: None when the
    model is not known yet; 'all' then needs it)."""
    stages: list[int] = []
    for v in values:
        if v == "all":
            stages.extend(range(1, num_stages + 1))
            continue
        try:
            stage = int(v)
        except ValueError:
            raise UsageError(f"--stage takes a stage number (1, 2, ...) or 'all', got {v!r}") from None
        if stage < 1 or (num_stages is not None and stage > num_stages):
            raise UsageError(f"--stage {stage} is out of range; this model has stages "
                             f"1-{num_stages or 'N'}")
        stages.append(stage)
    return list(dict.fromkeys(stages))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="usspectrum")
def cli() -> None:
    """FLOPs-accuracy spectra of universally slimmable networks.

    \b
    Examples:
      usspectrum flops --model us_mobilenet_v1 --widths 0.25:1.0:0.025
      usspectrum flops --model us_mobilenet_v1 --stem cifar --csv flops.csv
    """


@cli.command()
@click.option("--model", "model_name", default="us_mobilenet_v1", show_default=True,
              help="Registered model name (see --list).")
@click.option("--widths", default=None,
              help="START:STOP:STEP, a comma list, or config strings like 0.75@s5x0.6 "
                   "[default: " + WIDTHS_DEFAULT_HELP + "].")
@click.option("--image-size", type=int, default=None,
              help="Input side length [default: 224 for the ImageNet stem, 32 for CIFAR].")
@click.option("--stem", type=click.Choice(["imagenet", "cifar"]), default="imagenet",
              show_default=True, help="Input stem.")
@click.option("--num-classes", type=int, default=1000, show_default=True)
@click.option("--repeats", default=None, metavar="N,N,...",
              help="Blocks per stage of a shallower net [default: the paper's].")
@click.option("--stage", "stages", multiple=True,
              help="Also count each width with --ratio applied to this stage (1-5 or 'all'; repeatable).")
@click.option("--ratio", type=float, default=None, help="Extra ratio for --stage, in (0, 1].")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the table to this CSV file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--list", "list_only", is_flag=True, help="List the registered models and exit.")
def flops(model_name: str, widths: str, image_size: int | None, stem: str, num_classes: int,
          repeats: str | None, stages: tuple[str, ...], ratio: float | None, csv_path: str | None,
          as_json: bool, list_only: bool) -> None:
    """Count MFLOPs (multiply-adds, fvcore) and active parameters per width.

    \b
    Examples:
      usspectrum flops --model us_mobilenet_v1 --widths 0.25:1.0:0.025
      usspectrum flops --widths 0.25,0.5,0.75,1.0 --stem cifar --csv flops.csv
      usspectrum flops --widths 0.5:1.0:0.1 --stage 5 --ratio 0.6
      usspectrum flops --widths 0.75@s1x0.6@s5x0.8 --json
    """
    if list_only:
        click.echo("\n".join(list_models()))
        return
    extra = {"repeats": parse_repeats(repeats)} if repeats else {}
    model = create_model(model_name, num_classes=num_classes, stem=stem, **extra)
    configs = parse_width_list(widths or default_widths(model))
    if stages or ratio is not None:
        if not stages or ratio is None:
            raise UsageError("--stage and --ratio go together, e.g. --stage 5 --ratio 0.6")
        configs = configs + stage_variants(configs, parse_stages(stages, model.num_stages), ratio)
    emit(flops_table(model, configs, image_size), csv_path, as_json)


def check_device(device: str) -> str:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} asked for, but no CUDA GPU is visible; use --device cpu")
    return local_device(device)


SKIP_BAD_IMAGES = click.option(
    "--skip-bad-images", is_flag=True,
    help="Leave out image files that cannot be decoded (checked first, one extra decode "
         "each), warn with their paths and count them in the CSV/log.")


CALIB_AUGMENT = click.option(
    "--calib-augment", type=click.Choice(CALIB_AUGMENTS), default="train", show_default=True,
    help="train: calibrate BN on training images with the training augmentation (as "
         "training saw them); none: on plain images.")


OVERWRITE = click.option(
    "--overwrite", is_flag=True,
    help="Measure again into an existing output instead of resuming it (needed when its rows "
         "were measured with other settings or data).")


def sweep_options(fn):
    """Options shared by the commands that measure spectra."""
    options = [
        click.option("--data", required=True, type=click.Path(),
                     help="ImageFolder root with train/ and val/, or a CIFAR-10 python folder."),
        click.option("--widths", default=None,
                     help="START:STOP:STEP, a comma list, or config strings like 0.75@s5x0.6 "
                          "[default: " + WIDTHS_DEFAULT_HELP + "]."),
        click.option("--calib-images", type=int, default=None,
                     help="Training images for BN calibration (seeded subset) [default: 2000, "
                          "or all of train/ if fewer]."),
        CALIB_AUGMENT,
        click.option("--eval-images", type=int, default=None,
                     help="Cap the evaluation set (seeded subset) for quick looks."),
        click.option("--batch-size", type=int, default=200, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--workers", type=int, default=None, help="Data-loading processes."),
        click.option("--widths-per-pass", type=int, default=0, show_default=True,
                     help="Widths calibrated/evaluated per pass over the data (0: all)."),
        click.option("--latency", is_flag=True,
                     help="Add batch-1 latency (ms) and batch-64 throughput columns."),
        click.option("--x", "x_axis", type=click.Choice(["mflops", "latency"]), default="mflops",
                     show_default=True, help="Plot x-axis (latency needs --latency)."),
        click.option("--sliced", is_flag=True,
                     help="Slice weights on every forward instead of dense BN-folded "
                          "copies (the slow reference path)."),
        click.option("--calibration", type=click.Choice(CALIBRATION_MODES), default="auto",
                     show_default=True,
                     help="auto: calibrate widths without stored statistics."),
        click.option("--allow-extrapolate", is_flag=True,
                     help="Allow widths outside the trained range."),
        click.option("--device", default="cpu", show_default=True),
        SKIP_BAD_IMAGES,
        OVERWRITE,
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def settings_from(kw: dict) -> tuple[SweepSettings, bool]:
    """The sweep settings of the shared options, and ``--overwrite``."""
    return SweepSettings(
        calib_images=kw.pop("calib_images"), calib_augment=kw.pop("calib_augment"),
        eval_images=kw.pop("eval_images"),
        batch_size=kw.pop("batch_size"), seed=kw.pop("seed"), workers=kw.pop("workers"),
        widths_per_pass=kw.pop("widths_per_pass"), calibration=kw.pop("calibration"),
        allow_extrapolate=kw.pop("allow_extrapolate"), device=check_device(kw.pop("device")),
        progress=not kw.pop("quiet"), latency=kw.pop("latency"), dense=not kw.pop("sliced"),
        skip_bad_images=kw.pop("skip_bad_images")), kw.pop("overwrite")


def x_column(kw: dict, settings: SweepSettings) -> str:
    """The plot's x column from ``--x``; latency needs measured latencies."""
    x = kw.pop("x_axis")
    if x == "latency" and not settings.latency:
        raise UsageError("--x latency needs --latency (latencies are measured only then)")
    return "latency_ms" if x == "latency" else "mflops"


def default_out(checkpoint: str, suffix: str) -> str:
    return f"{Path(checkpoint).stem}-{suffix}.csv"


@cli.command("sweep")
@click.argument("checkpoint", type=click.Path())
@sweep_options
@click.option("-o", "--out", default=None, help="CSV to write/resume [default: CKPT-sweep.csv].")
@click.option("--label", default=None, help="Name of this model in the CSV and plot.")
@click.option("--no-plot", is_flag=True, help="Do not write the PNG/SVG plot.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def sweep_cmd(checkpoint: str, data: str, widths: str, out: str | None, label: str | None,
              no_plot: bool, as_json: bool, **kw) -> None:
    """Calibrate BN, evaluate and count FLOPs at every width of CHECKPOINT.

    Rows are appended to the CSV as they are measured; rerunning the same
    command resumes after the rows already there.

    \b
    Examples:
      usspectrum sweep us.pt --data ../shared/data/cifar10 --widths 0.25:1.0:0.025
      usspectrum sweep us.pt --data DIR --widths 0.25,0.5,0.75,1.0 --eval-images 2000
      usspectrum sweep us.pt --data DIR --widths 0.5@s5x0.6,0.75@s5x0.6 -o stage5.csv
      usspectrum sweep individual.pt --data DIR --allow-extrapolate
    """
    settings, overwrite = settings_from(kw)
    x = x_column(kw, settings)
    out = out or default_out(checkpoint, "sweep")
    try:
        df = run_sweep(checkpoint, data, widths, out, settings=settings, label=label,
                       overwrite=overwrite)
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted; finished rows are kept in {out}; "
                                   "rerun the same command to resume") from None
    if not no_plot and is_main():
        paths = plot_spectrum(df, Path(out).with_suffix(""), x=x, title=df["model"].iloc[0])
        note(f"plot: {', '.join(map(str, paths))}")
    emit(df[DISPLAY], None, as_json)
    note(f"results: {out}")


@cli.command("calibrate")
@click.argument("checkpoint", type=click.Path())
@click.option("--data", required=True, type=click.Path(),
              help="ImageFolder root with train/, or a CIFAR-10 python folder.")
@click.option("--widths", default=None,
              help="[default: " + WIDTHS_DEFAULT_HELP + "].")
@click.option("-o", "--out", required=True, help="Checkpoint to write, with the statistics.")
@click.option("--calib-images", type=int, default=None,
              help="[default: 2000, or all of train/ if fewer]")
@CALIB_AUGMENT
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=200, show_default=True)
@click.option("--workers", type=int, default=None)
@click.option("--allow-extrapolate", is_flag=True)
@click.option("--device", default="cpu", show_default=True)
@SKIP_BAD_IMAGES
@click.option("--quiet", is_flag=True)
def calibrate_cmd(checkpoint: str, data: str, widths: str, out: str, calib_images: int,
                  calib_augment: str, seed: int, batch_size: int, workers: int | None,
                  allow_extrapolate: bool, device: str, skip_bad_images: bool,
                  quiet: bool) -> None:
    """Store calibrated BN statistics per width in a new checkpoint, so later
    sweeps at those widths skip calibration.

    \b
    Examples:
      usspectrum calibrate us.pt --data ../shared/data/cifar10 -o us-cal.pt
      usspectrum calibrate released.pt --data /imagenet --widths 0.3,0.45 -o cal.pt
    """
    keys = calibrate_checkpoint(checkpoint, data, widths, out, calib_images=calib_images,
                                calib_augment=calib_augment, seed=seed, batch_size=batch_size,
                                workers=workers,
                                device=check_device(device),
                                allow_extrapolate=allow_extrapolate, progress=not quiet,
                                skip_bad_images=skip_bad_images)
    click.echo(f"calibrated {len(keys)} widths; wrote {out}")


@cli.command("plot")
@click.argument("csvs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", required=True, help="Output path without suffix (PNG and SVG written).")
@click.option("--x", "x", type=click.Choice(["mflops", "latency"]), default="mflops",
              show_default=True, help="x-axis; latency needs CSVs swept with --latency.")
@click.option("--title", default=None)
def plot_cmd(csvs: tuple[str, ...], out: str, x: str, title: str | None) -> None:
    """Re-draw spectra from CSV files alone.

    \b
    Examples:
      usspectrum plot us-sweep.csv s-sweep.csv -o figure2
      usspectrum plot compare.csv -o compare --title "CIFAR-10"
      usspectrum plot us-sweep.csv -o us-latency --x latency
    """
    x = "latency_ms" if x == "latency" else x
    frames = []
    for path in csvs:
        if not Path(path).is_file():
            raise UsageError(f"CSV {path} does not exist")
        try:
            df = pd.read_csv(path, dtype={"width": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            raise UsageError(f"{path} is not a readable CSV") from None
        check_columns(df, path, x)
        frames.append(df)
    paths = plot_spectrum(pd.concat(frames, ignore_index=True), out, x=x, title=title)
    click.echo("wrote " + ", ".join(map(str, paths)))


@cli.command("train")
@click.option("--kind", required=True, help="us, slimmable or individual.")
@click.option("--model", "model_name", default="mobilenet_v1", show_default=True,
              help="Model family (the kind picks us_/s_/plain).")
@click.option("--data", required=True, help="ImageFolder root with train/ and val/, or 'digits'.")
@click.option("-o", "--out", required=True, help="Checkpoint to write (saved after every epoch).")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True)
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--weight-decay", type=float, default=5e-4, show_default=True,
              help="Not applied to depthwise convs, BN and biases.")
@click.option("--schedule", type=click.Choice(["cosine", "linear"]), default="cosine",
              show_default=True)
@click.option("--warmup-epochs", type=float, default=1.0, show_default=True)
@click.option("--label-smoothing", type=float, default=0.0, show_default=True)
@click.option("--num-sample", type=int, default=4, show_default=True,
              help="US sandwich size: largest, smallest and n-2 random widths.")
@click.option("--width-range", type=float, nargs=2, default=None,
              help="US: smallest and largest trained width [default: the family's, "
                   "v1 0.25 1.0, v2 0.35 1.0].")
@click.option("--inplace-distill/--no-inplace-distill", default=True, show_default=True)
@click.option("--distill-weight", type=float, default=None,
              help="US: weight of inplace distillation in the small widths' loss, the rest "
                   "from the labels (1 = the paper's pure distillation) [default: "
                   f"{TrainConfig.distill_weight}].")
@click.option("--distill-ramp", type=float, default=None,
              help="US: epochs over which that weight rises linearly from 0 [default: "
                   f"{TrainConfig.distill_ramp}].")
@click.option("--nonuniform", is_flag=True, help="Random sandwich members draw a width per layer.")
@click.option("--average-output", is_flag=True,
              help="US: scale each conv's output by full / active input channels (Table 1).")
@click.option("--switches", type=float, multiple=True,
              help="S-Net widths (repeat the option) [default: v1 0.25 0.5 0.75 1.0, "
                   "v2 0.35 0.5 0.75 1.0].")
@click.option("--image-size", type=int, default=None, help="Input size [default: the images'].")
@click.option("--stem", type=click.Choice(["imagenet", "cifar"]), default=None,
              help="[default: cifar below 64 px]")
@click.option("--repeats", default=None, metavar="N,N,...",
              help="Blocks per stage for a shallower net, comma-separated [default: the "
                   "paper's, v1 1,2,2,6,2; v2 1,2,3,4,3,3,1].")
@click.option("--no-flip", is_flag=True, help="No horizontal flips (e.g. for digits).")
@click.option("--train-images", type=int, default=None, help="Train on a seeded subset.")
@click.option("--val-images", type=int, default=1000, show_default=True)
@click.option("--calib-images", type=int, default=500, show_default=True,
              help="BN calibration images for the per-epoch check of US-Nets.")
@click.option("--eval-every", type=int, default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--workers", type=int, default=None)
@click.option("--threads", type=int, default=None, help="torch CPU threads [default: all cores].")
@click.option("--resume", is_flag=True, help="Continue OUT from its last finished epoch.")
@SKIP_BAD_IMAGES
@click.option("--quiet", is_flag=True)
def train_cmd(**kw) -> None:
    """Train a US-Net (sandwich rule, inplace distillation), a slimmable
    S-Net (all switches, switchable BN) or an individual baseline.

    \b
    Examples:
      usspectrum train --kind us --nonuniform --data ../shared/data/cifar10 -o us.pt
      usspectrum train --kind slimmable --switches 0.25 --switches 0.5 --switches 0.75 \\
          --switches 1.0 --data ../shared/data/cifar10 -o s.pt
      usspectrum train --kind individual --data digits --image-size 16 --no-flip -o ind.pt
      usspectrum train --kind us --data DIR -o us.pt --resume
    """
    config = TrainConfig(
        kind=kw["kind"], model=kw["model_name"], data=kw["data"], out=kw["out"],
        epochs=kw["epochs"], batch_size=kw["batch_size"], lr=kw["lr"], momentum=kw["momentum"],
        weight_decay=kw["weight_decay"], schedule=kw["schedule"],
        warmup_epochs=kw["warmup_epochs"], label_smoothing=kw["label_smoothing"],
        num_sample=kw["num_sample"],
        width_range=tuple(kw["width_range"]) if kw["width_range"] else None,
        inplace_distill=kw["inplace_distill"], nonuniform=kw["nonuniform"],
        average_output=kw["average_output"],
        **{k: kw[k] for k in ("distill_weight", "distill_ramp") if kw[k] is not None},
        switches=tuple(kw["switches"]) or None, image_size=kw["image_size"], stem=kw["stem"],
        repeats=parse_repeats(kw["repeats"]),
        flip=not kw["no_flip"], train_images=kw["train_images"], val_images=kw["val_images"],
        calib_images=kw["calib_images"], eval_every=kw["eval_every"], seed=kw["seed"],
        device=check_device(kw["device"]), workers=kw["workers"], threads=kw["threads"],
        resume=kw["resume"], progress=not kw["quiet"], skip_bad_images=kw["skip_bad_images"])
    try:
        result = run_train(config)
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted; {config.out} holds the last finished epoch; "
                                   "rerun with --resume to continue") from None
    click.echo(result.log.to_string(index=False))
    note(f"checkpoint: {result.checkpoint}")


@cli.command("compare")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@sweep_options
@click.option("-o", "--out", default="compare", show_default=True,
              help="Folder for per-model CSVs, compare.csv and compare.png/svg.")
@click.option("--label", "labels", multiple=True, help="One name per checkpoint (repeat).")
@click.option("--no-plot", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def compare_cmd(checkpoints, data, widths, out, labels, no_plot, as_json, **kw) -> None:
    """Sweep several checkpoints at the same widths and plot them together
    (the seed's Figure 2). Every width is BN-calibrated; an S-Net between its
    switches uses the next larger switch's BN scale/bias, sliced, with fresh
    statistics; its trained switches are circled in the plot.

    \b
    Examples:
      usspectrum compare us.pt s.pt individual.pt --data ../shared/data/cifar10 -o fig2
      usspectrum compare a.pt b.pt --data DIR --widths 0.25:1.0:0.05 --label A --label B
    """
    settings, overwrite = settings_from(kw)
    x = x_column(kw, settings)
    settings.allow_extrapolate = True
    try:
        df = run_compare(checkpoints, data, widths, out, settings, labels or None, not no_plot, x=x,
                         overwrite=overwrite)
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted; finished rows are kept in {out}/; "
                                   "rerun the same command to resume") from None
    emit(df[DISPLAY], None, as_json)
    note(f"results: {Path(out) / 'compare.csv'}")


@cli.command("slim-stage")
@click.argument("checkpoint", type=click.Path())
@click.option("--stage", "stages", multiple=True, required=True,
              help="Stage 1-5 to slim, repeatable, or 'all'.")
@click.option("--ratio", type=float, default=0.6, show_default=True,
              help="Extra width ratio for that stage, in (0, 1].")
@sweep_options
@click.option("-o", "--out", default=None, help="CSV [default: CKPT-slim-stage.csv].")
@click.option("--no-plot", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def slim_stage_cmd(checkpoint, stages, ratio, data, widths, out, no_plot, as_json, **kw) -> None:
    """The uniform spectrum plus the spectrum with --ratio on single stages
    (the seed's Figure 1). Meant for a nonuniform-trained US-Net.

    \b
    Examples:
      usspectrum slim-stage us.pt --stage 5 --ratio 0.6 --data ../shared/data/cifar10
      usspectrum slim-stage us.pt --stage 1 --stage 4 --stage 5 --data DIR
      usspectrum slim-stage us.pt --stage all --widths 0.4:1.0:0.1 --data DIR
    """
    import warnings

    settings, overwrite = settings_from(kw)
    x = x_column(kw, settings)
    out = out or default_out(checkpoint, "slim-stage")
    # stage numbers are checked against the model once it is loaded
    model_stages = "all" if "all" in stages else parse_stages(stages, None)
    if not 0 < ratio <= 1:
        raise UsageError(f"--ratio must be in (0, 1], got {ratio}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            df = run_slim_stage(checkpoint, data, model_stages, ratio, widths, out, settings,
                                not no_plot, x=x, overwrite=overwrite)
        except KeyboardInterrupt:
            raise click.ClickException(f"interrupted; finished rows are kept in {out}; "
                                       "rerun the same command to resume") from None
    for w in caught:
        note(f"Warning: {w.message}")
    emit(df[DISPLAY], None, as_json)
    note(f"results: {out}")


@cli.command("export")
@click.argument("checkpoint", type=click.Path())
@click.option("--width", required=True, help="Width to export: 0.6, 0.75@s5x0.6, layers:...")
@click.option("-o", "--out", required=True, help="File to write (.pt2: torch.export, else TorchScript).")
@click.option("--format", "fmt", type=click.Choice(["auto", *EXPORT_FORMATS]), default="auto",
              show_default=True, help="auto: torch.export for .pt2, TorchScript otherwise.")
@click.option("--data", default=None, type=click.Path(),
              help="Calibrate BN at this width on DATA's train split first (if not stored).")
@click.option("--calib-images", type=int, default=None,
              help="[default: 2000, or all of train/ if fewer]")
@CALIB_AUGMENT
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--allow-extrapolate", is_flag=True, help="Allow a width outside the trained range.")
def export_cmd(checkpoint: str, width: str, out: str, fmt: str, data: str | None,
               calib_images: int, calib_augment: str, seed: int, allow_extrapolate: bool) -> None:
    """Write one width of CHECKPOINT as a standalone dense network (BN
    folded into the convs) that loads without usspectrum installed.

    \b
    Examples:
      usspectrum export us.pt --width 0.6 -o slim.pt        # torch.jit.load("slim.pt")
      usspectrum export us.pt --width 0.6 -o slim.pt2       # torch.export.load(...).module()
      usspectrum export us.pt --width 0.55 --data ../shared/data/cifar10 -o w055.pt
    """
    from .export import export_width, prepare_width

    model, warning = prepare_width(checkpoint, width, data, calib_images=calib_images,
                                   calib_augment=calib_augment, seed=seed,
                                   allow_extrapolate=allow_extrapolate)
    if warning:
        note(f"Warning: {warning}")
    if fmt == "auto":
        fmt = "export" if str(out).endswith(".pt2") else "torchscript"
    meta = export_width(model, width, out, fmt)
    click.echo(f"wrote {out} ({fmt}): width {meta['width']}, channels {meta['channels']}")


def parse_budgets(text: str | None, what: str) -> list[float]:
    """``2,4,8`` or ``START:STOP:STEP`` as a sorted list of budgets."""
    if not text:
        return []
    values: list[float] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if ":" in part:
                start, stop, step = (float(p) for p in part.split(":"))
                if step <= 0 or stop < start:
                    raise ValueError
                count = int((stop - start) / step + 1e-6) + 1
                values.extend(round(start + i * step, 6) for i in range(count))
            elif part:
                values.append(float(part))
    except ValueError:
        raise UsageError(f"{what} takes numbers such as 2,4,8 or a range START:STOP:STEP, "
                         f"got {text!r}") from None
    if any(v <= 0 for v in values):
        raise UsageError(f"{what} must be positive, got {text!r}")
    return sorted(set(values), reverse=True)


@cli.command("search")
@click.argument("checkpoint", type=click.Path())
@click.option("--data", required=True, type=click.Path(),
              help="ImageFolder root: train/ gives the search and calibration images, val/ "
                   "the reported accuracies.")
@click.option("--budget", "budget", default=None, metavar="MFLOPS",
              help="MFLOPs budgets: 2,4,8 or START:STOP:STEP.")
@click.option("--latency-budget", default=None, metavar="MS",
              help="Batch-1 latency budgets in ms on this machine (measured along the path).")
@click.option("--granularity", type=click.Choice(GRANULARITIES), default="stage",
              show_default=True, help="Slim whole stages, or every slimmable layer on its own.")
@click.option("--step", type=float, default=0.05, show_default=True,
              help="Width-ratio decrement of one slimming step (repeated until the group's "
                   "channel count changes).")
@click.option("--per-flop", is_flag=True, help="Rank candidates by accuracy lost per MFLOP saved.")
@click.option("--search-images", type=int, default=None,
              help="Held-out training images that rank the candidates [default: 2000, fewer "
                   "on a small train/].")
@click.option("--calib-images", type=int, default=None,
              help="Other training images for each candidate's BN calibration [default: "
                   "1000, a third of a small train/].")
@CALIB_AUGMENT
@click.option("--eval-images", type=int, default=None,
              help="Cap the validation images of the report.")
@click.option("--report-calib-images", type=int, default=None,
              help="Training images calibrating BN for the report's validation sweep "
                   "[default: 2000, or all of train/ if fewer].")
@click.option("--stage-csv", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A slim-stage CSV whose per-stage curves join the plot (Figure 1).")
@click.option("-o", "--out", default=None, help="Path CSV [default: CKPT-search.csv]; the "
              "budget table and plot go beside it.")
@click.option("--batch-size", type=int, default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=None)
@click.option("--no-report", is_flag=True, help="Only the greedy path, no validation report.")
@OVERWRITE
@click.option("--quiet", is_flag=True)
def search_cmd(checkpoint, data, budget, latency_budget, granularity, step, per_flop,
               search_images, calib_images, calib_augment, eval_images, report_calib_images,
               stage_csv, out, batch_size, seed, workers, no_report, overwrite, quiet) -> None:
    """Greedy slimming (AutoSlim-style) of a trained US-Net: from the largest
    width, repeatedly slim the group whose slimming costs the least top-1 on
    held-out training images, one row per step; then report the config
    chosen at each budget against the uniform width of equal or more FLOPs,
    on val/. A full path of the CIFAR-10 MobileNet v1 took 9 min (stage) and
    40 min (layer granularity) on 2 cores; --step 0.1 about halves it.

    \b
    Examples:
      usspectrum search us.pt --data ../shared/data/cifar10 --budget 10,20,35
      usspectrum search us.pt --data DIR --budget 5:40:5 --granularity layer
      usspectrum search us.pt --data DIR --latency-budget 1.5,2.5 --per-flop
      usspectrum search us.pt --data DIR --budget 20 --stage-csv us-slim-stage.csv
    """
    budgets = parse_budgets(budget, "--budget")
    latency_budgets = parse_budgets(latency_budget, "--latency-budget")
    out = out or default_out(checkpoint, "search")
    settings = SearchSettings(granularity=granularity, step=step, per_flop=per_flop,
                              search_images=search_images, calib_images=calib_images,
                              calib_augment=calib_augment, batch_size=batch_size, seed=seed,
                              workers=workers, progress=not quiet)
    try:
        path = run_search(checkpoint, data, out, settings,
                          budgets=budgets if not latency_budgets else (), overwrite=overwrite)
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted; finished steps are kept in {out}; rerun "
                                   "the same command to resume") from None
    click.echo(path[["step", "group", "mflops", "top1", "loss", "seconds"]].to_string(index=False))
    note(f"path: {out} ({len(path)} rows)")
    if no_report or not (budgets or latency_budgets):
        return
    sweep_settings = SweepSettings(calib_images=report_calib_images, calib_augment=calib_augment,
                                   eval_images=eval_images, batch_size=batch_size, seed=seed,
                                   workers=workers, progress=not quiet)
    table = budget_report(checkpoint, data, path, budgets, Path(out).parent,
                          latency_budgets=latency_budgets, stage_csv=stage_csv,
                          sweep_settings=sweep_settings)
    click.echo(table.to_string(index=False))
    note(f"budgets: {Path(out).parent / 'search-budgets.csv'}; plot: "
         f"{Path(out).parent / 'search.png'}")


@cli.command("demo")
@click.option("-o", "--out", default="usspectrum-demo", show_default=True)
@click.option("--epochs", type=int, default=15, show_default=True)
@click.option("--quiet", is_flag=True)
def demo_cmd(out: str, epochs: int, quiet: bool) -> None:
    """Train a nonuniform US-Net, a 4-switch S-Net and an individual net on
    scikit-learn's bundled handwritten digits (offline), then write the
    compare and slim-stage CSVs and plots to --out.

    \b
    Examples:
      usspectrum demo
      usspectrum demo --out demo --epochs 10
    """
    results = run_demo(out, epochs, progress=not quiet)
    click.echo(results["compare"][DISPLAY].to_string(index=False))
    click.echo(f"wrote {out}/compare.csv, {out}/compare.png, {out}/slim-stage.csv, "
               f"{out}/slim-stage.png (and .svg)", err=True)


def main() -> None:
    cli(prog_name="usspectrum")


if __name__ == "__main__":
    sys.exit(main())
