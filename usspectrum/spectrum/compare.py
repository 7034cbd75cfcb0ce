"""Spectra side by side: several checkpoints at the same widths (Figure 2),
and one checkpoint with extra ratios on single stages (Figure 1)."""
from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..io.checkpoint import load_checkpoint
from ..runtime.distributed import context
from ..errors import USSpectrumError, UsageError
from ..io.plot import plot_spectrum
from ..io.results import write_table
from ..models.base import has_named_switches
from .sweep import SweepSettings, check_data_fits, default_widths, sweep
from ..nn.width import WidthConfig, parse_width_list, stage_variants

def compare(checkpoints: Sequence[str | os.PathLike], data: str | os.PathLike,
            widths: str | Sequence | None, out_dir: str | os.PathLike,
            settings: SweepSettings | None = None, labels: Sequence[str] | None = None,
            plot: bool = True, x: str = "mflops", overwrite: bool = False,
            reference: Sequence[str] = ()) -> pd.DataFrame:
    """Sweep every checkpoint at the same widths (BN calibrated at every
    width, widths outside a model's trained range allowed) and write
    ``compare.csv`` plus one plot with a curve per model; per-model CSVs in
    ``out_dir`` make a rerun resume."""
    if not checkpoints:
        raise UsageError("give at least one checkpoint to compare")
    settings = settings or SweepSettings()
    # every model calibrated at every width, on the same images
    calibration = "always" if settings.calibration == "auto" else settings.calibration
    settings = dataclasses.replace(settings, allow_extrapolate=True, calibration=calibration)
    models = [load_checkpoint(c, device=settings.device) for c in checkpoints]
    labels = list(labels) if labels else _unique_labels(checkpoints)
    if len(labels) != len(models):
        raise UsageError(f"{len(labels)} labels for {len(models)} checkpoints")
    first = models[0].meta.get("class_names")
    for path, model in zip(checkpoints, models):
        names = model.meta.get("class_names")
        if first and names and names != first:
            raise USSpectrumError(f"{path} has other classes than {checkpoints[0]} "
                                  f"({len(names)} vs {len(first)} classes); compare models "
                                  "trained on the same data")
    for model in models:  # every mismatch before any work
        check_data_fits(model, data)
    ranged = [m for m in models if not has_named_switches(m)] or models
    if widths is None:  # the widest trained range among the models
        widths = default_widths(min(ranged, key=lambda m: (m.kind == "individual",
                                                           m.width_range[0])))
    configs = (parse_width_list(widths) if isinstance(widths, str)
               else [WidthConfig.coerce(w) for w in widths])
    # an AutoSlim model runs at its own named switches only; a model runs
    # at the widths it holds (S-ShuffleNet's 2.0 is wider than a MobileNet)
    plans = [default_widths(model) if has_named_switches(model) else
             _widths_held(model, configs, label) for label, model in zip(labels, models)]
    out_dir = Path(out_dir)
    frames, marked = [], {}
    for label, model, own in zip(labels, models, plans):
        frames.append(sweep(model, data, own, out_dir / f"{label}.csv", settings, label=label,
                            overwrite=overwrite))
        if model.kind == "slimmable":
            marked[label] = [str(WidthConfig.coerce(s)) for s in model.switches]
    df = pd.concat(frames, ignore_index=True)
    if not context(settings.device).is_main:
        return df
    write_table(df, out_dir / "compare.csv")
    if plot:
        plot_spectrum(df, out_dir / "compare", marked=marked, x=x, reference=reference,
                      title="Accuracy vs MFLOPs (BN calibrated at every width)")
    return df


def slim_stage(checkpoint: str | os.PathLike, data: str | os.PathLike,
               stages: Sequence[int] | str,
               ratio: float, widths: str | Sequence | None, out: str | os.PathLike,
               settings: SweepSettings | None = None, plot: bool = True,
               x: str = "mflops", overwrite: bool = False) -> pd.DataFrame:
    """The uniform spectrum plus, for each stage, the spectrum with ``ratio``
    applied to that stage on top of the global width (the US-Nets paper's Figure 1)."""
    settings = settings or SweepSettings()
    model = load_checkpoint(checkpoint, device=settings.device)
    if stages == "all":
        stages = range(1, model.num_stages + 1)
    for stage in stages:
        if not 1 <= stage <= model.num_stages:
            raise UsageError(f"--stage {stage} is out of range; this model has stages "
                             f"1-{model.num_stages}")
    recipe = model.meta.get("train", {}).get("recipe", {})
    if model.kind != "us" or not recipe.get("nonuniform"):
        warnings.warn(f"{checkpoint} is not a nonuniform-trained US-Net (kind {model.kind}, "
                      f"nonuniform={recipe.get('nonuniform')}): per-stage slimming was never "
                      "trained, so its curves say little about the stages", stacklevel=2)
    widths = default_widths(model) if widths is None else widths
    configs = parse_width_list(widths) if isinstance(widths, str) else list(widths)
    configs = [WidthConfig.coerce(c) for c in configs]
    configs = configs + stage_variants(configs, list(stages), ratio)
    df = sweep(model, data, configs, out, settings, overwrite=overwrite)
    if plot and context(settings.device).is_main:
        plot_spectrum(df, Path(out).with_suffix(""), x=x,
                      title=f"Slimming single stages by x{ratio} (nonuniform US-Net)")
    return df


def _widths_held(model, configs: Sequence[WidthConfig], label: str) -> list[WidthConfig]:
    """The configs no wider than ``model``'s full width; a warning names the others."""
    full = getattr(model, "full_width", 1.0)
    held = [c for c in configs if max(c.layer_ratios or (c.width,)) <= full + 1e-9]
    if not held:
        raise UsageError(f"none of the widths fits {label}, whose full width is {full}; "
                         f"give widths in (0, {full}]")
    if len(held) < len(configs):
        skipped = ", ".join(str(c) for c in configs if c not in held)
        warnings.warn(f"{label} holds widths up to {full}; compared without {skipped}",
                      stacklevel=2)
    return held


def _unique_labels(paths: Sequence) -> list[str]:
    labels: list[str] = []
    for p in paths:
        base = label = Path(p).stem
        i = 2
        while label in labels:
            label, i = f"{base}-{i}", i + 1
        labels.append(label)
    return labels
