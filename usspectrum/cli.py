"""The ``usspectrum`` command line: parses, calls the library, prints."""
from __future__ import annotations

import json
import sys
from typing import Any

import click
import pandas as pd

from . import __version__
from .errors import USSpectrumError, UsageError
from .flops import flops_table
from .models import create_model, list_models
from .results import write_table
from .width import parse_width_list, stage_variants

DEFAULT_WIDTHS = "0.25:1.0:0.025"


class BadUsage(click.ClickException):
    """A one-line usage error (exit 2) without click's usage banner."""

    exit_code = 2


class Group(click.Group):
    """Turns library errors into one-line messages: exit 2 for bad input,
    1 for everything else the user can fix."""

    def invoke(self, ctx: click.Context) -> Any:
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
        click.echo(f"wrote {len(df)} rows to {csv_path}", err=True)


def parse_stages(values: tuple[str, ...], num_stages: int) -> list[int]:
    stages: list[int] = []
    for v in values:
        if v == "all":
            stages.extend(range(1, num_stages + 1))
            continue
        try:
            stage = int(v)
        except ValueError:
            raise UsageError(f"--stage takes a number 1-{num_stages} or 'all', got {v!r}") from None
        if not 1 <= stage <= num_stages:
            raise UsageError(f"--stage {stage} is out of range; this model has stages 1-{num_stages}")
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
@click.option("--widths", default=DEFAULT_WIDTHS, show_default=True,
              help="START:STOP:STEP, a comma list, or config strings like 0.75@s5x0.6.")
@click.option("--image-size", type=int, default=None,
              help="Input side length [default: 224 for the ImageNet stem, 32 for CIFAR].")
@click.option("--stem", type=click.Choice(["imagenet", "cifar"]), default="imagenet",
              show_default=True, help="Input stem.")
@click.option("--num-classes", type=int, default=1000, show_default=True)
@click.option("--stage", "stages", multiple=True,
              help="Also count each width with --ratio applied to this stage (1-5 or 'all'; repeatable).")
@click.option("--ratio", type=float, default=None, help="Extra ratio for --stage, in (0, 1].")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the table to this CSV file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--list", "list_only", is_flag=True, help="List the registered models and exit.")
def flops(model_name: str, widths: str, image_size: int | None, stem: str, num_classes: int,
          stages: tuple[str, ...], ratio: float | None, csv_path: str | None,
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
    model = create_model(model_name, num_classes=num_classes, stem=stem)
    configs = parse_width_list(widths)
    if stages or ratio is not None:
        if not stages or ratio is None:
            raise UsageError("--stage and --ratio go together, e.g. --stage 5 --ratio 0.6")
        configs = configs + stage_variants(configs, parse_stages(stages, model.num_stages), ratio)
    emit(flops_table(model, configs, image_size), csv_path, as_json)


def main() -> None:
    cli(prog_name="usspectrum")


if __name__ == "__main__":
    sys.exit(main())
