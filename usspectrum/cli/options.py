"""Options built from the settings dataclasses (:class:`TrainConfig`,
:class:`SweepSettings`, :class:`SearchSettings`): each option's default
and help are those of its field, so they are written once, in the library.
Options several commands share are declared here once."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import click

from ..io.data import CALIB_AUGMENTS
from ..spectrum.sweep import CALIBRATION_MODES, SweepSettings
from .app import check_device

WIDTHS_DEFAULT_HELP = ("the model's trained range in steps of 0.025, e.g. 0.25:1.0:0.025 for "
                       "MobileNet v1, 0.35:1.0:0.025 for v2")
_TYPES = {"int": int, "float": float, "str": str}


def field_of(cls: type, name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(cls)}[name]


def setting(cls: type, name: str, *decls: str, invert: bool = False,
            convert: Callable[[Any], Any] | None = None, dest: str | None = None,
            **kw) -> Callable:
    """A click option for field ``name`` of ``cls``: its default and help
    (``kw`` overrides); ``invert`` for a flag that turns a True field off
    (``--quiet`` for ``progress``); ``convert`` maps the parsed value;
    ``dest`` names the parameter when it is not the field."""
    f = field_of(cls, name)
    default = f.default
    decls = decls or ("--" + name.replace("_", "-"),)
    kw.setdefault("help", f.metadata.get("help"))
    annotation = str(f.type)
    if invert:
        kw.update(is_flag=True, flag_value=False, default=True)
    elif annotation == "bool" and "/" not in decls[0]:
        kw.update(is_flag=True, default=default)
    else:
        kw.setdefault("default", default)
        base = annotation.split("|")[0].strip()
        if "type" not in kw and base in _TYPES and not kw.get("multiple"):
            kw["type"] = _TYPES[base]
        if kw["default"] is not None and not kw.get("required") and annotation != "bool":
            kw.setdefault("show_default", True)
    if kw.get("required"):
        kw.pop("default", None)
    if convert is not None:
        kw["callback"] = lambda ctx, param, value: convert(value)
    return click.option(*decls, dest or name, **kw)


def build(cls: type, kw: dict):
    """``cls`` from the parsed options that are its fields (taken out of ``kw``)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: kw.pop(k) for k in list(kw) if k in names})


def stack(*options: Callable) -> Callable:
    """Apply ``options`` in the order given (first listed first in --help)."""
    def apply(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return apply


DATA = click.option("--data", required=True, type=click.Path(),
                    help="ImageFolder root with train/ and val/, a CIFAR-10 python folder, "
                         "or 'digits' (bundled with scikit-learn).")
WIDTHS = click.option("--widths", default=None,
                      help="START:STOP:STEP, a comma list, or config strings like 0.75@s5x0.6 "
                           "[default: " + WIDTHS_DEFAULT_HELP + "].")
OVERWRITE = click.option(
    "--overwrite", is_flag=True,
    help="Measure again into an existing output instead of resuming it (needed when its rows "
         "were measured with other settings or data).")
JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
REFERENCE = click.option(
    "--reference", "reference", multiple=True, metavar="MODEL",
    help="Also draw the authors' published curve of this released model (names: "
         "usspectrum published); repeatable.")
NO_PLOT = click.option("--no-plot", is_flag=True, help="Do not write the PNG/SVG plot.")
X_AXIS = click.option("--x", "x_axis", type=click.Choice(["mflops", "latency"]), default="mflops",
                      show_default=True, help="Plot x-axis (latency needs --latency).")


def sweep_setting(name: str, *decls: str, **kw) -> Callable:
    return setting(SweepSettings, name, *decls, **kw)


SWEEP_OPTIONS = stack(
    DATA, WIDTHS,
    sweep_setting("calib_images"),
    sweep_setting("calib_augment", type=click.Choice(CALIB_AUGMENTS)),
    sweep_setting("eval_images"),
    sweep_setting("batch_size"),
    sweep_setting("seed"),
    sweep_setting("workers"),
    sweep_setting("widths_per_pass"),
    sweep_setting("latency"),
    X_AXIS,
    sweep_setting("dense", "--sliced", invert=True,
                  help="Slice weights on every forward instead of running dense BN-folded "
                       "copies (the slow reference path)."),
    sweep_setting("calibration", type=click.Choice(CALIBRATION_MODES)),
    sweep_setting("allow_extrapolate"),
    sweep_setting("device", convert=check_device),
    sweep_setting("skip_bad_images"),
    OVERWRITE,
    sweep_setting("progress", "--quiet", invert=True, help="No progress bars."),
)
"""The options of every command that measures spectra."""


def x_column(x_axis: str, settings: SweepSettings) -> str:
    """The plot's x column from ``--x``; latency needs measured latencies."""
    from ..errors import UsageError

    if x_axis == "latency" and not settings.latency:
        raise UsageError("--x latency needs --latency (latencies are measured only then)")
    return "latency_ms" if x_axis == "latency" else "mflops"
