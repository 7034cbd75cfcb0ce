"""Commands that measure: flops, sweep, compare, slim-stage, plot, calibrate."""
from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from ..errors import UsageError
from ..io.data import CALIB_AUGMENTS
from ..io.plot import check_columns, plot_spectrum
from ..models import create_model, list_models
from ..nn.width import parse_width_list, stage_variants
from ..spectrum.calibrate import calibrate_checkpoint
from ..spectrum.compare import compare as run_compare
from ..spectrum.compare import slim_stage as run_slim_stage
from ..spectrum.flops import flops_table
from ..spectrum.sweep import SweepSettings, default_widths
from ..spectrum.sweep import sweep as run_sweep
from .app import (DISPLAY, check_device, cli, default_out, emit, is_main, note, on_interrupt,
                  parse_repeats, parse_stages)
from .options import (DATA, JSON, NO_PLOT, REFERENCE, SWEEP_OPTIONS, WIDTHS, WIDTHS_DEFAULT_HELP,
                      build,
                      stack, sweep_setting, x_column)

RESUME_HINT = "rerun the same command to resume"


@cli.command("sweep")
@click.argument("checkpoint", type=click.Path())
@SWEEP_OPTIONS
@click.option("-o", "--out", default=None, help="CSV to write/resume [default: CKPT-sweep.csv].")
@click.option("--label", default=None, help="Name of this model in the CSV and plot.")
@NO_PLOT
@REFERENCE
@JSON
def sweep_cmd(checkpoint, data, widths, out, label, no_plot, reference, as_json, x_axis,
              overwrite, **kw) -> None:
    """Accuracy and MFLOPs of CHECKPOINT at every width.

    BN is calibrated per width unless the checkpoint stores statistics for it.

    Rows are appended to the CSV as they are measured; rerunning the same
    command resumes after the rows already there.

    \b
    Examples:
      usspectrum sweep us.pt --data ../shared/data/cifar10 --widths 0.25:1.0:0.025
      usspectrum sweep us.pt --data DIR --widths 0.25,0.5,0.75,1.0 --eval-images 2000
      usspectrum sweep us.pt --data DIR --widths 0.5@s5x0.6,0.75@s5x0.6 -o stage5.csv
      usspectrum sweep individual.pt --data DIR --allow-extrapolate
      usspectrum sweep us_v1_release.pt --data IMAGENET --reference us_mobilenet_v1
    """
    settings = build(SweepSettings, kw)
    x = x_column(x_axis, settings)
    out = out or default_out(checkpoint, "sweep")
    on_interrupt(f"finished rows are kept in {out}; {RESUME_HINT}")
    df = run_sweep(checkpoint, data, widths, out, settings=settings, label=label,
                   overwrite=overwrite)
    if not no_plot and is_main():
        paths = plot_spectrum(df, Path(out).with_suffix(""), x=x, title=df["model"].iloc[0],
                              reference=reference)
        note(f"plot: {', '.join(map(str, paths))}")
    emit(df[DISPLAY], None, as_json)
    note(f"results: {out}")


@cli.command("compare")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@SWEEP_OPTIONS
@click.option("-o", "--out", default="compare", show_default=True,
              help="Folder for per-model CSVs, compare.csv and compare.png/svg.")
@click.option("--label", "labels", multiple=True, help="One name per checkpoint (repeat).")
@NO_PLOT
@REFERENCE
@JSON
def compare_cmd(checkpoints, data, widths, out, labels, no_plot, reference, as_json, x_axis,
                overwrite, **kw) -> None:
    """Several checkpoints at the same widths, one figure.

    As in the US-Nets paper's Figure 2: every width is BN-calibrated; an
    S-Net between its switches uses the next larger switch's BN scale and
    bias, sliced, with fresh statistics; its trained switches are circled.

    \b
    Examples:
      usspectrum compare us.pt s.pt individual.pt --data ../shared/data/cifar10 -o fig2
      usspectrum compare a.pt b.pt --data DIR --widths 0.25:1.0:0.05 --label A --label B
    """
    settings = build(SweepSettings, kw)
    x = x_column(x_axis, settings)
    settings.allow_extrapolate = True
    on_interrupt(f"finished rows are kept in {out}/; {RESUME_HINT}")
    df = run_compare(checkpoints, data, widths, out, settings, labels or None, not no_plot,
                     x=x, overwrite=overwrite, reference=reference)
    emit(df[DISPLAY], None, as_json)
    note(f"results: {Path(out) / 'compare.csv'}")


@cli.command("slim-stage")
@click.argument("checkpoint", type=click.Path())
@click.option("--stage", "stages", multiple=True, required=True,
              help="Stage 1-5 to slim, repeatable, or 'all'.")
@click.option("--ratio", type=float, default=0.6, show_default=True,
              help="Extra width ratio for that stage, in (0, 1].")
@SWEEP_OPTIONS
@click.option("-o", "--out", default=None, help="CSV [default: CKPT-slim-stage.csv].")
@NO_PLOT
@JSON
def slim_stage_cmd(checkpoint, stages, ratio, data, widths, out, no_plot, as_json, x_axis,
                   overwrite, **kw) -> None:
    """The spectrum with --ratio on single stages.

    The uniform spectrum, plus one curve per --stage with that stage slimmed
    by --ratio on top of the width.

    As in the US-Nets paper's Figure 1; meant for a nonuniform-trained US-Net.

    \b
    Examples:
      usspectrum slim-stage us.pt --stage 5 --ratio 0.6 --data ../shared/data/cifar10
      usspectrum slim-stage us.pt --stage 1 --stage 4 --stage 5 --data DIR
      usspectrum slim-stage us.pt --stage all --widths 0.4:1.0:0.1 --data DIR
    """
    settings = build(SweepSettings, kw)
    x = x_column(x_axis, settings)
    out = out or default_out(checkpoint, "slim-stage")
    # stage numbers are checked against the model once it is loaded
    model_stages = "all" if "all" in stages else parse_stages(stages, None)
    if not 0 < ratio <= 1:
        raise UsageError(f"--ratio must be in (0, 1], got {ratio}")
    on_interrupt(f"finished rows are kept in {out}; {RESUME_HINT}")
    df = run_slim_stage(checkpoint, data, model_stages, ratio, widths, out, settings,
                        not no_plot, x=x, overwrite=overwrite)
    emit(df[DISPLAY], None, as_json)
    note(f"results: {out}")


@cli.command("plot")
@click.argument("csvs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", required=True, help="Output path without suffix (PNG and SVG written).")
@click.option("--x", "x", type=click.Choice(["mflops", "latency"]), default="mflops",
              show_default=True, help="x-axis; latency needs CSVs swept with --latency.")
@click.option("--title", default=None)
@REFERENCE
def plot_cmd(csvs: tuple[str, ...], out: str, x: str, title: str | None,
             reference: tuple[str, ...]) -> None:
    """Redraw spectra from CSV files alone.

    \b
    Examples:
      usspectrum plot us-sweep.csv s-sweep.csv -o figure2
      usspectrum plot compare.csv -o compare --title "CIFAR-10"
      usspectrum plot us-sweep.csv -o us-latency --x latency
      usspectrum plot us-sweep.csv -o vs-paper --reference us_mobilenet_v1
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
    paths = plot_spectrum(pd.concat(frames, ignore_index=True), out, x=x, title=title,
                          reference=reference)
    click.echo("wrote " + ", ".join(map(str, paths)))


@cli.command("calibrate")
@click.argument("checkpoint", type=click.Path())
@stack(DATA, WIDTHS)
@click.option("-o", "--out", required=True, help="Checkpoint to write, with the statistics.")
@stack(sweep_setting("calib_images"),
       sweep_setting("calib_augment", type=click.Choice(CALIB_AUGMENTS)),
       sweep_setting("seed"), sweep_setting("batch_size"), sweep_setting("workers"),
       sweep_setting("allow_extrapolate"), sweep_setting("device", convert=check_device),
       sweep_setting("skip_bad_images"),
       sweep_setting("progress", "--quiet", invert=True, help="No progress bars."))
def calibrate_cmd(checkpoint: str, data: str, widths: str, out: str, **kw) -> None:
    """Store calibrated BN statistics in a copy of CHECKPOINT.

    Later sweeps at those widths then skip calibration.

    \b
    Examples:
      usspectrum calibrate us.pt --data ../shared/data/cifar10 -o us-cal.pt
      usspectrum calibrate released.pt --data /imagenet --widths 0.3,0.45 -o cal.pt
    """
    keys = calibrate_checkpoint(checkpoint, data, widths, out, **kw)
    click.echo(f"calibrated {len(keys)} widths; wrote {out}")


@cli.command()
@click.option("--model", "model_name", default="us_mobilenet_v1", show_default=True,
              help="Registered model name (see --list).")
@click.option("--widths", default=None,
              help="START:STOP:STEP, a comma list, or config strings like 0.75@s5x0.6 "
                   "or an AutoSlim switch such as 150M "
                   "[default: " + WIDTHS_DEFAULT_HELP + "].")
@click.option("--image-size", type=int, default=None,
              help="Input side length [default: 224 for the ImageNet stem, 32 for CIFAR].")
@click.option("--stem", type=click.Choice(["imagenet", "cifar"]), default="imagenet",
              show_default=True, help="Input stem.")
@click.option("--num-classes", type=int, default=1000, show_default=True)
@click.option("--repeats", default=None, metavar="N,N,...",
              help="Blocks per stage of a shallower net [default: the paper's].")
@click.option("--stage", "stages", multiple=True,
              help="Also count each width with --ratio applied to this stage (1-5 or 'all'; "
                   "repeatable).")
@click.option("--ratio", type=float, default=None, help="Extra ratio for --stage, in (0, 1].")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the table to this CSV file.")
@JSON
@click.option("--list", "list_only", is_flag=True, help="List the registered models and exit.")
def flops(model_name: str, widths: str, image_size: int | None, stem: str, num_classes: int,
          repeats: str | None, stages: tuple[str, ...], ratio: float | None, csv_path: str | None,
          as_json: bool, list_only: bool) -> None:
    """MFLOPs and active parameters per width.

    MFLOPs count multiply-adds of convs and linear layers (fvcore), as the
    US-Nets paper does.

    \b
    Examples:
      usspectrum flops --model us_mobilenet_v1 --widths 0.25:1.0:0.025
      usspectrum flops --widths 0.25,0.5,0.75,1.0 --stem cifar --csv flops.csv
      usspectrum flops --widths 0.5:1.0:0.1 --stage 5 --ratio 0.6
      usspectrum flops --widths 0.75@s1x0.6@s5x0.8 --json
      usspectrum flops --model s_resnet50 --widths 0.25,0.5,0.75,1.0
      usspectrum flops --model autoslim_mobilenet_v1 --widths 150M,325M,572M
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
