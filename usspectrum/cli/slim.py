"""Commands that pick and ship a slim network: search, export."""
from __future__ import annotations

from pathlib import Path

import click

from ..io.data import CALIB_AUGMENTS
from ..io.export import FORMATS as EXPORT_FORMATS
from ..spectrum.search import GRANULARITIES, SearchSettings, budget_report
from ..spectrum.search import search as run_search
from ..spectrum.sweep import SweepSettings
from .app import cli, default_out, note, on_interrupt, parse_numbers
from .options import OVERWRITE, REFERENCE, build, setting, stack, sweep_setting


def _search(name: str, *decls: str, **kw):
    return setting(SearchSettings, name, *decls, **kw)


@cli.command("search")
@click.argument("checkpoint", type=click.Path())
@click.option("--data", required=True, type=click.Path(),
              help="ImageFolder root: train/ gives the search and calibration images, val/ "
                   "the reported accuracies.")
@click.option("--budget", "budget", default=None, metavar="MFLOPS",
              help="MFLOPs budgets: 2,4,8 or START:STOP:STEP.")
@click.option("--latency-budget", default=None, metavar="MS",
              help="Batch-1 latency budgets in ms on this machine (measured along the path).")
@stack(
    _search("granularity", type=click.Choice(GRANULARITIES)),
    _search("step"), _search("per_flop"), _search("search_images"), _search("calib_images"),
    _search("calib_augment", type=click.Choice(CALIB_AUGMENTS)),
    sweep_setting("eval_images", help="Cap the validation images of the report."),
    sweep_setting("calib_images", "--report-calib-images", dest="report_calib_images",
                  help="Training images calibrating BN for the report's validation sweep "
                       "[default: 2000, or all of train/ if fewer]."),
)
@click.option("--stage-csv", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A slim-stage CSV whose per-stage curves join the plot (the US-Nets "
                   "paper's Figure 1).")
@click.option("-o", "--out", default=None, help="Path CSV [default: CKPT-search.csv]; the "
              "budget table and plot go beside it.")
@stack(_search("batch_size"), _search("seed"), _search("workers"))
@click.option("--no-report", is_flag=True, help="Only the greedy path, no validation report.")
@REFERENCE
@OVERWRITE
@_search("progress", "--quiet", invert=True, help="No progress bars.")
def search_cmd(checkpoint, data, budget, latency_budget, eval_images, report_calib_images,
               stage_csv, out, no_report, reference, overwrite, **kw) -> None:
    """Slim a US-Net greedily under MFLOPs or latency budgets.

    From the largest width, repeatedly slim the group (stage or layer) whose
    slimming costs the least top-1 on held-out training images, one CSV row
    per step; then report the config chosen at each budget against the
    uniform width of equal or more FLOPs, on val/. Layer granularity takes
    several times longer than stage granularity; --step 0.1 about halves
    either.

    \b
    Examples:
      usspectrum search us.pt --data ../shared/data/cifar10 --budget 10,20,35
      usspectrum search us.pt --data DIR --budget 5:40:5 --granularity layer
      usspectrum search us.pt --data DIR --latency-budget 1.5,2.5 --per-flop
      usspectrum search us.pt --data DIR --budget 20 --stage-csv us-slim-stage.csv
      usspectrum search us.pt --data DIR --budget 150,325,572 --reference autoslim_mobilenet_v1
    """
    budgets = parse_numbers(budget, "--budget")
    latency_budgets = parse_numbers(latency_budget, "--latency-budget")
    out = out or default_out(checkpoint, "search")
    settings = build(SearchSettings, kw)
    on_interrupt(f"finished steps are kept in {out}; rerun the same command to resume")
    path = run_search(checkpoint, data, out, settings,
                      budgets=budgets if not latency_budgets else (), overwrite=overwrite)
    click.echo(path[["step", "group", "mflops", "top1", "loss", "seconds"]].to_string(index=False))
    note(f"path: {out} ({len(path)} rows)")
    if no_report or not (budgets or latency_budgets):
        return
    sweep_settings = SweepSettings(calib_images=report_calib_images,
                                   calib_augment=settings.calib_augment,
                                   eval_images=eval_images, batch_size=settings.batch_size,
                                   seed=settings.seed, workers=settings.workers,
                                   progress=settings.progress)
    table = budget_report(checkpoint, data, path, budgets, Path(out).parent,
                          latency_budgets=latency_budgets, stage_csv=stage_csv,
                          sweep_settings=sweep_settings, reference=reference)
    click.echo(table.to_string(index=False))
    note(f"budgets: {Path(out).parent / 'search-budgets.csv'}; plot: "
         f"{Path(out).parent / 'search.png'}")


@cli.command("export")
@click.argument("checkpoint", type=click.Path())
@click.option("--width", required=True, help="Width to export: 0.6, 0.75@s5x0.6, layers:...")
@click.option("-o", "--out", required=True,
              help="File to write (.pt2: torch.export, else TorchScript).")
@click.option("--format", "fmt", type=click.Choice(["auto", *EXPORT_FORMATS]), default="auto",
              show_default=True, help="auto: torch.export for .pt2, TorchScript otherwise.")
@click.option("--data", default=None, type=click.Path(),
              help="Calibrate BN at this width on DATA's train split first (if not stored).")
@stack(sweep_setting("calib_images"),
       sweep_setting("calib_augment", type=click.Choice(CALIB_AUGMENTS)),
       sweep_setting("seed"),
       sweep_setting("allow_extrapolate", help="Allow a width outside the trained range."))
def export_cmd(checkpoint: str, width: str, out: str, fmt: str, data: str | None,
               **kw) -> None:
    """One width of CHECKPOINT as a standalone network.

    BN is folded into the convs; the file loads with torch alone, without
    usspectrum.

    \b
    Examples:
      usspectrum export us.pt --width 0.6 -o slim.pt        # torch.jit.load("slim.pt")
      usspectrum export us.pt --width 0.6 -o slim.pt2       # torch.export.load(...).module()
      usspectrum export us.pt --width 0.55 --data ../shared/data/cifar10 -o w055.pt
    """
    from ..io.export import export_width
    from ..spectrum.calibrate import prepare_width

    model, warning = prepare_width(checkpoint, width, data, **kw)
    if warning:
        note(f"Warning: {warning}")
    if fmt == "auto":
        fmt = "export" if str(out).endswith(".pt2") else "torchscript"
    meta = export_width(model, width, out, fmt)
    click.echo(f"wrote {out} ({fmt}): width {meta['width']}, channels {meta['channels']}")
