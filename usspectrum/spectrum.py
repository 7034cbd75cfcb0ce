"""The spectrum engine: widths in, one measured row per width out.

For a chunk of widths at a time, BN statistics are calibrated in one pass
over the calibration subset and accuracy measured in one pass over the
evaluation set (each batch decoded once, run at every width of the chunk);
rows are appended to the CSV as each chunk finishes, so an interrupted sweep
keeps its finished rows and a rerun resumes after them.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .calibration import Calibrator, is_calibrated
from .checkpoint import load_checkpoint
from .data import (check_classes, eval_transform, make_loader, open_split, seeded_subset)
from .errors import UsageError, USSpectrumError
from .evaluate import evaluate
from .flops import FlopCounter
from .results import RowWriter
from .width import WidthConfig, WidthLike, parse_width_list

COLUMNS = ["model", "arch", "kind", "width", "mflops", "params_m", "top1", "top5",
           "calib_images", "eval_images", "bn", "seconds", "calib_seconds", "eval_seconds",
           "image_size", "seed", "checkpoint", "fingerprint"]
CALIBRATION_MODES = ("auto", "always", "never")
_TOL = 1e-9


@dataclass
class SweepSettings:
    """How a spectrum is measured.

    ``calibration``: ``auto`` calibrates widths without stored statistics,
    ``always`` recalibrates every width, ``never`` uses what the model has
    (stored statistics, else the training-time running statistics)."""

    calib_images: int = 2000
    eval_images: int | None = None
    batch_size: int = 200
    seed: int = 0
    workers: int | None = None
    widths_per_pass: int = 4
    calibration: str = "auto"
    allow_extrapolate: bool = False
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATION_MODES:
            raise UsageError(f"calibration must be one of {CALIBRATION_MODES}, got {self.calibration!r}")
        if self.batch_size < 1 or self.widths_per_pass < 1:
            raise UsageError("batch size and widths per pass must be at least 1")


def check_trained_range(model: nn.Module, config: WidthConfig) -> None:
    """Refuse widths outside what the model was trained for."""
    lo, hi = model.width_range
    ratios = config.layer_ratios or (config.width,)
    if min(ratios) < lo - _TOL or max(ratios) > hi + _TOL:
        raise UsageError(
            f"width {config} is outside the range this {model.kind} model was trained for "
            f"({lo}-{hi}); pass --allow-extrapolate to evaluate it anyway")


def resolve_widths(model: nn.Module, widths: Sequence[WidthLike] | str,
                   allow_extrapolate: bool) -> list[WidthConfig]:
    configs = (parse_width_list(widths) if isinstance(widths, str)
               else [WidthConfig.coerce(w) for w in widths])
    for config in configs:
        config.channels(model.slots)  # stage indices and per-layer lengths
        if not allow_extrapolate:
            check_trained_range(model, config)
    return configs


def sweep(checkpoint: str | os.PathLike | nn.Module, data: str | os.PathLike,
          widths: Sequence[WidthLike] | str, out: str | os.PathLike | None = None,
          settings: SweepSettings | None = None, label: str | None = None,
          **overrides) -> pd.DataFrame:
    """Measure ``checkpoint`` at every width; returns a DataFrame with
    :data:`COLUMNS` (including rows resumed from ``out``)."""
    settings = dataclasses.replace(settings or SweepSettings(), **overrides)
    model = (checkpoint if isinstance(checkpoint, nn.Module)
             else load_checkpoint(checkpoint, device=settings.device))
    model.to(settings.device).eval()
    meta = model.meta
    configs = resolve_widths(model, widths, settings.allow_extrapolate)
    spec = meta["image"]
    label = label or (Path(meta["path"]).stem if meta.get("path") else model.arch["name"])

    writer = RowWriter(out, COLUMNS) if out is not None else None
    done = _resumable_rows(writer, meta, settings) if writer else pd.DataFrame(columns=COLUMNS)
    todo = [c for c in configs if str(c) not in set(done["width"].astype(str))]

    rows: list[dict] = []
    if todo:
        transform = eval_transform(spec)
        val = open_split(data, "val", transform)
        check_classes(val, meta.get("class_names"), f"{data}/val")
        val = seeded_subset(val, settings.eval_images, settings.seed, "--eval-images")
        needs_calibration = settings.calibration == "always" or (
            settings.calibration == "auto" and not all(is_calibrated(model, c) for c in todo))
        calib = None
        if needs_calibration:
            train = open_split(data, "train", transform)
            check_classes(train, meta.get("class_names"), f"{data}/train")
            calib = seeded_subset(train, settings.calib_images, settings.seed, "--calib-images")
        counter = FlopCounter(model, spec.image_size)
        base = {"model": label, "arch": model.arch["name"], "kind": model.kind,
                "image_size": spec.image_size, "seed": settings.seed,
                "checkpoint": meta.get("path", ""), "fingerprint": meta.get("fingerprint", ""),
                "eval_images": len(val)}
        step = settings.widths_per_pass
        bar = tqdm(total=len(todo), desc=f"sweep {label}", unit="width",
                   disable=not settings.progress, leave=True)
        try:
            for start in range(0, len(todo), step):
                chunk = todo[start:start + step]
                for row in _measure_chunk(model, chunk, calib, val, settings, counter, bar):
                    row = {**base, **row}
                    rows.append(row)
                    if writer:
                        writer.append(row)
                bar.update(len(chunk))
        finally:
            bar.close()
    new = pd.DataFrame(rows, columns=COLUMNS)
    frames = [f for f in (done, new) if len(f)]
    result = pd.concat(frames, ignore_index=True) if frames else new
    order = {str(c): i for i, c in enumerate(configs)}
    result = result[result["width"].astype(str).isin(order)]
    return result.sort_values("width", key=lambda s: s.astype(str).map(order)).reset_index(drop=True)


def _measure_chunk(model, chunk, calib, val, settings, counter, bar) -> list[dict]:
    mode = settings.calibration
    to_calibrate = [c for c in chunk if mode == "always" or (mode == "auto" and not is_calibrated(model, c))]
    source = {str(c): ("calibrated" if c in to_calibrate else
                       "stored" if is_calibrated(model, c) else "running") for c in chunk}
    t0 = time.perf_counter()
    calib_count = 0
    if to_calibrate:
        loader = make_loader(calib, settings.batch_size, settings.workers)
        with Calibrator(model, to_calibrate) as cal:
            for images, _ in _progress(loader, bar, f"calibrate {len(to_calibrate)} widths"):
                cal.update(images.to(settings.device))
        calib_count = cal.images
    t1 = time.perf_counter()
    loader = make_loader(val, settings.batch_size, settings.workers)
    accuracy = evaluate(model, _progress(loader, bar, f"evaluate {len(chunk)} widths"),
                        chunk, settings.device)
    t2 = time.perf_counter()
    rows = []
    for config in chunk:
        cost = counter.at(config)
        acc = accuracy[str(config)]
        calib_s = (t1 - t0) / max(1, len(to_calibrate)) if config in to_calibrate else 0.0
        eval_s = (t2 - t1) / len(chunk)
        rows.append({"width": str(config), "mflops": round(cost.mflops, 3),
                     "params_m": round(cost.params_m, 4), "top1": round(acc.top1, 3),
                     "top5": round(acc.top5, 3), "calib_images": calib_count if config in to_calibrate
                     else 0, "bn": source[str(config)], "seconds": round(calib_s + eval_s, 3),
                     "calib_seconds": round(calib_s, 3), "eval_seconds": round(eval_s, 3)})
    return rows


def _progress(loader, bar, what: str):
    """Show batch progress inside the width bar's postfix."""
    total = len(loader)
    for i, batch in enumerate(loader, 1):
        if not bar.disable:
            bar.set_postfix_str(f"{what}: batch {i}/{total}", refresh=True)
        yield batch


def _resumable_rows(writer: RowWriter, meta: dict, settings: SweepSettings) -> pd.DataFrame:
    done = writer.existing()
    if not len(done):
        return done
    prints = set(done["fingerprint"].astype(str))
    if prints != {meta.get("fingerprint", "")}:
        raise USSpectrumError(f"{writer.path} holds results of another checkpoint "
                              f"(fingerprint {sorted(prints)[0]}); choose another output or delete it")
    if "seed" in done.columns and set(done["seed"]) != {settings.seed}:
        raise USSpectrumError(f"{writer.path} was measured with another --seed; rerun with "
                              "the same settings or choose another output")
    if settings.eval_images is not None and "eval_images" in done.columns \
            and set(done["eval_images"]) != {settings.eval_images}:
        raise USSpectrumError(f"{writer.path} was measured on {sorted(set(done['eval_images']))} "
                              "evaluation images; rerun with the same --eval-images or choose another output")
    return done[[c for c in COLUMNS if c in done.columns]]
