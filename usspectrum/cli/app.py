"""The command group, its error handling and the printing helpers."""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import click
import pandas as pd

from .. import __version__
from ..errors import USSpectrumError, UsageError
from ..io.results import write_table
from ..runtime.allocator import keep_freed_memory
from ..runtime.distributed import launched, local_device

DISPLAY = ["model", "width", "mflops", "params_m", "top1", "top5", "bn", "seconds"]


def is_main() -> bool:
    """Rank 0 of a torchrun launch, or the only process."""
    return os.environ.get("RANK", "0") == "0" or not launched()


def note(message: str) -> None:
    """A status line on stderr, from rank 0 only under torchrun."""
    if is_main():
        click.echo(message, err=True)


def on_interrupt(message: str) -> None:
    """What Ctrl-C during this command leaves behind and how to go on
    (printed as ``Error: interrupted; <message>``)."""
    click.get_current_context().meta["usspectrum.on_interrupt"] = message


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    note(f"Warning: {message}")


class BadUsage(click.ClickException):
    """A one-line usage error (exit 2) without click's usage banner."""

    exit_code = 2


class Group(click.Group):
    """Turns library errors and Ctrl-C into one-line messages: exit 2 for
    bad input, 1 for everything else the user can fix."""

    def invoke(self, ctx: click.Context) -> Any:
        keep_freed_memory()
        if launched() and os.environ.get("RANK", "0") != "0":
            # under torchrun rank 0 prints; the others only report errors
            sys.stdout = open(os.devnull, "w")
        try:
            with warnings.catch_warnings():
                # a library warning is one line for the user, not a source location
                warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except click.UsageError as exc:  # click's own parsing errors, in one line too
            where = exc.ctx.command_path if exc.ctx else "usspectrum"
            raise BadUsage(f"{exc.format_message()} (see '{where} --help')") from None
        except UsageError as exc:
            raise BadUsage(str(exc)) from None
        except USSpectrumError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            hint = ctx.meta.get("usspectrum.on_interrupt", "nothing was saved")
            raise click.ClickException(f"interrupted; {hint}") from None


class OrderedGroup(Group):
    """Lists commands in the order a user meets them, not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=OrderedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="usspectrum")
def cli() -> None:
    """FLOPs-accuracy spectra of universally slimmable networks (US-Nets),
    slimmable networks (S-Nets) and individually trained baselines.

    \b
    The usual path:
      usspectrum sweep us.pt --data DIR                  # accuracy and MFLOPs at every width
      usspectrum compare us.pt s.pt ind.pt --data DIR    # several models, one figure
      usspectrum slim-stage us.pt --stage 5 --ratio 0.6 --data DIR
      usspectrum plot compare/compare.csv -o figure      # redraw from CSV alone
      usspectrum train --kind us --data DIR -o us.pt     # make the models
    Then: search (widths under a budget), export (one width as a plain
    network), calibrate, flops, demo (all of it offline, on bundled digits).
    """


def main() -> None:
    cli(prog_name="usspectrum")


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


def check_device(device: str) -> str:
    """``--device``, refused when it names a GPU this machine lacks."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} asked for, but no CUDA GPU is visible; use --device cpu")
    return local_device(device)


def default_out(checkpoint: str, suffix: str) -> str:
    return f"{Path(checkpoint).stem}-{suffix}.csv"


def parse_repeats(text: str | None) -> tuple[int, ...] | None:
    """``--repeats 1,1,2,1,1`` as block counts."""
    if text is None:
        return None
    try:
        return tuple(int(t) for t in text.replace(" ", ",").split(",") if t)
    except ValueError:
        raise UsageError(f"--repeats takes comma-separated block counts such as 1,2,2,6,2, "
                         f"got {text!r}") from None


def parse_numbers(text: str | None, what: str) -> list[float]:
    """``2,4,8`` or ``START:STOP:STEP`` as positive numbers, largest first."""
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
