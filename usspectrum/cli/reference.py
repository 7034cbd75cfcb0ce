"""The ``published`` command: the authors' published spectra."""
from __future__ import annotations

import click

from ..io.published import published, published_models
from .app import cli, emit


@cli.command("published")
@click.option("--model", "model_name", default=None, metavar="NAME",
              help="One released model (default: all of them).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the rows to this CSV.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--list", "list_only", is_flag=True, help="List the released models and exit.")
def published_cmd(model_name: str | None, csv_path: str | None, as_json: bool,
                  list_only: bool) -> None:
    """The authors' published MFLOPs and top-1 of every released model.

    ImageNet, 224x224, top-1 = 100 - the published top-1 error; widths as in
    sweep CSVs (1.0, 0.25, or an AutoSlim switch such as 150M). Sources:
    MODEL_ZOO.md and README.md of JiahuiYu/slimmable_networks (the
    ``source`` column). Draw one next to your own curve with --reference.

    \b
    Examples:
      usspectrum published --model us_mobilenet_v1
      usspectrum published --csv published.csv
      usspectrum plot us-sweep.csv -o vs-paper --reference us_mobilenet_v1
    """
    if list_only:
        click.echo("\n".join(published_models()))
        return
    df = published(model_name)
    emit(df[["model", "width", "mflops", "top1"]] if not csv_path else df, csv_path, as_json)
