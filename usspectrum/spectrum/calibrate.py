"""Calibrating a checkpoint file at chosen widths: stored in a copy
(``usspectrum calibrate``) or ready for an export (``usspectrum export``).

It sits above :mod:`usspectrum.spectrum.calibration` (the statistics themselves),
:mod:`usspectrum.io.checkpoint` and :mod:`usspectrum.spectrum.sweep`, so none of
those needs to import it back.
"""
from __future__ import annotations

import os

import torch.nn as nn
from tqdm.auto import tqdm

from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..io.data import checkpoint_calibration_images, make_loader, warn_skipped, without_bad_images
from ..io.results import ensure_writable
from ..nn.bn_stats import is_calibrated
from ..nn.width import WidthLike
from ..runtime.distributed import BatchShard, context, on_main
from .calibration import DenseCalibrator, average_across_processes, calibrate
from .sweep import resolve_widths


def calibrate_checkpoint(checkpoint: str, data: str, widths, out: str, *,
                         calib_images: int | None = None, calib_augment: str = "train", seed: int = 0,
                         batch_size: int = 200, workers: int | None = None, device: str = "cpu",
                         allow_extrapolate: bool = False, progress: bool = True,
                         skip_bad_images: bool = False) -> list[str]:
    """Calibrate ``checkpoint`` at ``widths`` on ``data``'s train split and
    save a copy carrying the statistics to ``out``. Returns the width keys."""
    ctx = context(device)
    on_main(lambda: ensure_writable(out), ctx)
    model = load_checkpoint(checkpoint, device=device)
    configs = resolve_widths(model, widths, allow_extrapolate)
    subset = checkpoint_calibration_images(data, model.meta, calib_images, seed, calib_augment,
                                           default=2000)
    skipped: list[str] = []
    if skip_bad_images:
        subset, skipped = without_bad_images(subset, "calibration images", progress and ctx.is_main)
        if ctx.is_main:
            warn_skipped(skipped, "calibration images")
    # under torchrun each process takes every world-th batch; averages are merged after
    loader = make_loader(subset, batch_size, workers,
                         batch_sampler=BatchShard(len(subset), batch_size, ctx))
    batches = tqdm(loader, desc=f"calibrate {len(configs)} widths", unit="batch",
                   disable=not (progress and ctx.is_main))
    with DenseCalibrator(model, configs, allow_empty=ctx.enabled) as cal:
        for images, _ in batches:
            cal.update(images.to(device))
    if ctx.enabled:
        average_across_processes(model, configs, cal.batches)
    if ctx.is_main:
        record = dict(model.meta.get("train", {}))
        record["calibration"] = {"images": len(subset), "augment": calib_augment, "seed": seed,
                                 "data": str(data), "skipped_images": len(skipped)}
        save_checkpoint(model, out, train=record)
    return [str(c) for c in configs]


def prepare_width(checkpoint: str | os.PathLike, width: WidthLike, data: str | os.PathLike | None,
                  *, calib_images: int | None = None, calib_augment: str = "train", seed: int = 0,
                  batch_size: int = 200, workers: int | None = None,
                  allow_extrapolate: bool = False
                  ) -> tuple[nn.Module, str | None]:
    """Load ``checkpoint`` ready to export ``width``: with its BN statistics
    calibrated on ``data`` when it has none stored for that width. Returns
    the model and a warning (or None) about the statistics it will use."""
    model = load_checkpoint(checkpoint)
    (config,) = resolve_widths(model, [width], allow_extrapolate)
    if is_calibrated(model, config):
        return model, None
    if data is None:
        if model.kind == "individual" and config.width == 1.0 and not config.layer_ratios:
            return model, None
        return model, (f"width {config} has no calibrated BN statistics in {checkpoint}; the "
                       "export uses the training-time running statistics. Pass --data to "
                       "calibrate it first")
    subset = checkpoint_calibration_images(data, model.meta, calib_images, seed, calib_augment,
                                           default=2000)
    calibrate(model, make_loader(subset, batch_size, workers), [config])
    return model, None
