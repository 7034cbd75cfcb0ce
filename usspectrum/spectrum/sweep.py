"""The spectrum engine: widths in, one measured row per width out.

A pass takes a group of widths (by default all of them): BN statistics of
every width are calibrated in one pass over the calibration subset, then
every width's dense, BN-folded copy (:mod:`usspectrum.nn.folding`) is evaluated in
one pass over the evaluation set. Each batch is decoded once, by DataLoader
workers, and used by all widths. Rows are appended to the CSV when a pass
ends; inside a pass, progress is kept in ``<csv>.partial.pt``
(:mod:`usspectrum.spectrum.passstate`), so a rerun resumes where the last run stopped.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pandas as pd
import torch.nn as nn
from torch.utils.data import Subset
from tqdm.auto import tqdm

from ..runtime.allocator import keep_freed_memory
from .calibration import (Calibrator, DenseCalibrator, average_across_processes, get_bn_stats,
                          is_calibrated, set_bn_stats)
from ..io.checkpoint import load_checkpoint
from ..io.data import (check_calib_augment, check_classes, checkpoint_calibration_images,
                   eval_transform, fitted_count, make_loader, open_split, seeded_subset,
                   warn_skipped, without_bad_images)
from ..nn.folding import to_dense
from ..runtime.distributed import BatchShard, Context, barrier, context, on_main, shard_indices, sum_counts
from ..errors import UsageError
from .evaluate import Accuracy, SlicedAtWidth, evaluate_nets
from .flops import FlopCounter
from ..io.identity import check_resume, data_identity
from .latency import measure_speed
from ..models import model_defaults
from ..models.base import has_named_switches
from .passstate import PassState, state_path
from ..io.lock import exclusive_writer
from ..io.results import RowWriter
from ..nn.width import WidthConfig, WidthLike, format_ratio, parse_width_list

COLUMNS = ["model", "arch", "kind", "width", "mflops", "params_m", "top1", "top5",
           "calib_images", "calib_augment", "eval_images", "bn", "seconds", "load_seconds",
           "calib_seconds", "eval_seconds", "latency_ms", "throughput", "image_size", "seed",
           "skipped_images", "checkpoint", "fingerprint", "data"]
DEFAULT_CALIB_IMAGES = 2000
# the option that sets each recorded column, for resume errors
OPTIONS = {"fingerprint": "checkpoint fingerprint", "data": "data", "seed": "--seed",
           "image_size": "image size", "eval_images": "--eval-images",
           "calib_images": "--calib-images", "calib_augment": "--calib-augment",
           "bn": "--calibration (BN statistics)"}
CALIBRATION_MODES = ("auto", "always", "never")
_TOL = 1e-9


@dataclass
class SweepSettings:
    """How a spectrum is measured.

    ``calib_augment``: ``train`` calibrates on augmented training images
    (see :func:`usspectrum.io.data.calibration_images`), ``none`` on plain ones.
    ``calib_images`` / ``eval_images``: ``None`` takes 2,000 calibration
    images / all of val/, fewer when the split has fewer (with a note).
    ``calibration``: ``auto`` calibrates widths without stored statistics,
    ``always`` recalibrates every width, ``never`` uses what the model has
    (stored statistics, else the training-time running statistics).
    ``widths_per_pass``: widths handled per pass over the data (0: all).
    ``dense``: run dense BN-folded copies (False: slice weights per forward,
    the slow reference path). ``latency``: also measure each width's batch-1
    latency and batch-64 throughput. ``save_every``: seconds between saves
    of an unfinished pass."""

    calib_images: int | None = field(default=None, metadata={"help": 'Training images for BN calibration (seeded subset) [default: 2000, or all of train/ if fewer].'})
    calib_augment: str = field(default="train", metadata={"help": 'train: calibrate BN on training images with the training augmentation (as training saw them); none: on plain images.'})
    eval_images: int | None = field(default=None, metadata={"help": 'Evaluate on a seeded subset of val/ of this size [default: all of it].'})
    batch_size: int = field(default=200, metadata={"help": 'Images per batch.'})
    seed: int = field(default=0, metadata={"help": 'Seed of the calibration and evaluation subsets.'})
    workers: int | None = field(default=None, metadata={"help": 'Data-loading processes [default: cores - 1, at most 4].'})
    widths_per_pass: int = field(default=0, metadata={"help": 'Widths calibrated and evaluated per pass over the data (0: all).'})
    calibration: str = field(default="auto", metadata={"help": 'auto: calibrate widths without stored statistics; always: every width; never: use the stored or training-time statistics.'})
    allow_extrapolate: bool = field(default=False, metadata={"help": 'Allow widths outside the trained range.'})
    device: str = field(default="cpu", metadata={"help": 'cpu, cuda or cuda:N.'})
    progress: bool = field(default=True, metadata={"help": 'Show progress bars.'})
    dense: bool = field(default=True, metadata={"help": 'Run dense BN-folded copies of each width (False: slice weights on every forward, the slow reference path).'})
    latency: bool = field(default=False, metadata={"help": 'Also measure batch-1 latency (ms) and batch-64 throughput per width.'})
    save_every: float = field(default=30.0, metadata={"help": 'Seconds between saves of an unfinished pass.'})
    skip_bad_images: bool = field(default=False, metadata={"help": 'Leave out image files that cannot be decoded (checked first, one extra decode each), warn with their paths and count them in the CSV.'})

    def __post_init__(self) -> None:
        check_calib_augment(self.calib_augment)
        if self.calibration not in CALIBRATION_MODES:
            raise UsageError(f"calibration must be one of {CALIBRATION_MODES}, got {self.calibration!r}")
        if self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {self.batch_size}")
        if self.widths_per_pass < 0:
            raise UsageError("widths per pass must be 0 (all) or more, "
                             f"got {self.widths_per_pass}")


def check_trained_range(model: nn.Module, config: WidthConfig) -> None:
    """Refuse widths outside what the model was trained for."""
    if has_named_switches(model):
        if config.switch not in model.switches:
            raise UsageError(
                f"width {config} is not a switch of this model, which runs at its switches "
                f"{', '.join(model.switches)}; pass --allow-extrapolate to evaluate other "
                "widths (slices of its base network, never trained)")
        return
    lo, hi = model.width_range
    ratios = config.layer_ratios or (config.width,)
    if min(ratios) < lo - _TOL or max(ratios) > hi + _TOL:
        raise UsageError(
            f"width {config} is outside the range this {model.kind} model was trained for "
            f"({lo}-{hi}); pass --allow-extrapolate to evaluate it anyway")


DEFAULT_STEP = 0.025  # the step of the authors' released width lists


def default_widths(model: nn.Module) -> str:
    """The model's trained width range at steps of 0.025 (the authors' width
    lists: 31 widths for MobileNet v1, 27 for v2). An individual model
    takes its family's US range, the range Figure 2 slices it over; an
    AutoSlim model its named switches."""
    if has_named_switches(model):
        return ",".join(model.switches)
    lo, hi = model.width_range
    if model.kind == "individual":
        name = getattr(model, "arch", {}).get("name", "")
        try:
            lo, hi = model_defaults("us_" + name)["width_range"]
        except (UsageError, KeyError):
            pass
    return f"{format_ratio(lo)}:{format_ratio(hi)}:{DEFAULT_STEP}"


def resolve_widths(model: nn.Module, widths: Sequence[WidthLike] | str | None,
                   allow_extrapolate: bool) -> list[WidthConfig]:
    """Width configs to evaluate, checked against ``model``; ``None``: the
    model's trained range (:func:`default_widths`; 1.0 alone for an
    individual model unless extrapolating)."""
    if widths is None:
        widths = (default_widths(model) if model.kind != "individual" or allow_extrapolate
                  else "1.0")
    configs = (parse_width_list(widths) if isinstance(widths, str)
               else [WidthConfig.coerce(w) for w in widths])
    for config in configs:
        config.channels(model.slots)  # stage indices and per-layer lengths
        if not allow_extrapolate:
            check_trained_range(model, config)
    return configs


def sweep(checkpoint: str | os.PathLike | nn.Module, data: str | os.PathLike,
          widths: Sequence[WidthLike] | str | None = None, out: str | os.PathLike | None = None,
          settings: SweepSettings | None = None, label: str | None = None,
          overwrite: bool = False, **overrides) -> pd.DataFrame:
    """Measure ``checkpoint`` at every width; returns a DataFrame with
    :data:`COLUMNS` (including rows resumed from ``out``, which must have
    been measured the same way; ``overwrite`` measures them again)."""
    settings = dataclasses.replace(settings or SweepSettings(), **overrides)
    keep_freed_memory()
    ctx = context(settings.device)
    model = (checkpoint if isinstance(checkpoint, nn.Module)
             else load_checkpoint(checkpoint, device=settings.device))
    model.to(settings.device).eval()
    meta = model.meta
    configs = resolve_widths(model, widths, settings.allow_extrapolate)
    spec = meta["image"]
    label = label or (Path(meta["path"]).stem if meta.get("path") else model.arch["name"])
    data_id = data_identity(data)
    val = open_split(data, "val", eval_transform(spec))
    check_classes(val, meta.get("class_names"), f"{data}/val", meta.get("num_outputs"))
    eval_count = fitted_count(settings.eval_images, None, len(val), "--eval-images", f"{data}/val")
    val = seeded_subset(val, eval_count, settings.seed, "--eval-images")

    # only rank 0 touches the CSV; the others learn from it what is left to do
    def open_results():
        if out is not None and overwrite and ctx.is_main:
            Path(out).unlink(missing_ok=True)
            state_path(out).unlink(missing_ok=True)
        writer = (RowWriter(out, COLUMNS, numeric=("mflops", "top1", "top5"), key=("width",))
                  if out is not None else None)
        done = writer.existing() if writer else pd.DataFrame(columns=COLUMNS)
        _check_resume(done, writer, model, configs, settings, data_id, len(val), data)
        return writer, done[[c for c in COLUMNS if c in done.columns]]

    # one run at a time appends to a CSV (two would leave every width twice)
    with exclusive_writer(out if ctx.is_main else None):
        writer, done = on_main(open_results, ctx)
        writer = writer if ctx.is_main else None
        todo = [c for c in configs if str(c) not in set(done["width"].astype(str))]
        rows = _measure(model, todo, val, data, data_id, label, out, writer, settings, ctx) \
            if todo else []
    new = pd.DataFrame(rows, columns=COLUMNS)
    frames = [f for f in (done, new) if len(f)]
    result = pd.concat(frames, ignore_index=True) if frames else new
    order = {str(c): i for i, c in enumerate(configs)}
    result = result[result["width"].astype(str).isin(order)]
    return result.sort_values("width", key=lambda s: s.astype(str).map(order)).reset_index(drop=True)


def _measure(model, todo, val, data, data_id: str, label: str, out, writer,
             settings: SweepSettings, ctx) -> list[dict]:
    """Calibrate and evaluate the widths ``todo``, pass by pass; their rows
    (appended to ``writer`` as each pass ends)."""
    meta, spec = model.meta, model.meta["image"]
    rows: list[dict] = []
    skipped: list[str] = []
    if settings.skip_bad_images:
        val, skipped = without_bad_images(val, "val images", settings.progress and ctx.is_main)
    calib = None
    if any(_bn_source(model, c, settings.calibration) == "calibrated" for c in todo):
        calib = checkpoint_calibration_images(data, meta, settings.calib_images, settings.seed,
                                              settings.calib_augment,
                                              default=DEFAULT_CALIB_IMAGES)
        if settings.skip_bad_images:
            calib, bad = without_bad_images(calib, "calibration images",
                                            settings.progress and ctx.is_main)
            skipped += bad
    if ctx.is_main:
        warn_skipped(skipped, "images")
    counter = FlopCounter(model, spec.image_size)
    base = {"model": label, "arch": model.arch["name"], "kind": model.kind,
            "image_size": spec.image_size, "seed": settings.seed,
            "checkpoint": meta.get("path", ""), "fingerprint": meta.get("fingerprint", ""),
            "eval_images": len(val), "skipped_images": len(skipped), "data": data_id}
    step = settings.widths_per_pass or len(todo)
    bar = tqdm(total=len(todo), desc=f"sweep {label}", unit="width",
               disable=not (settings.progress and ctx.is_main), leave=True)
    try:
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            partial = state_path(out) if out is not None else None
            for row in _run_pass(model, chunk, calib, val, settings, counter, bar, partial, ctx):
                row = {**base, **row}
                rows.append(row)
                if writer:
                    writer.append(row)
            if partial is not None and ctx.is_main:
                partial.unlink(missing_ok=True)
            barrier(ctx)
            bar.update(len(chunk))
    finally:
        bar.close()
    return rows


def check_data_fits(model: nn.Module, data: str | os.PathLike) -> None:
    """Refuse ``data`` whose classes cannot be ``model``'s (see
    :func:`usspectrum.io.data.check_classes`), before any work."""
    val = open_split(data, "val")
    check_classes(val, model.meta.get("class_names"), f"{data}/val",
                  model.meta.get("num_outputs"))


def _bn_source(model: nn.Module, config: WidthConfig, mode: str) -> str:
    """Where the BN statistics of ``config`` come from under ``--calibration mode``."""
    if mode == "always" or (mode == "auto" and not is_calibrated(model, config)):
        return "calibrated"
    return "stored" if is_calibrated(model, config) else "running"


def _check_resume(done: pd.DataFrame, writer, model, configs, settings: SweepSettings,
                  data_id: str, eval_count: int, data) -> None:
    """Refuse rows of ``done`` measured otherwise than this sweep would
    measure them (checkpoint, data, seed, image size, evaluation images,
    BN source, and for calibrated rows the calibration images)."""
    if not len(done):
        return
    meta = model.meta
    check_resume(done, {"fingerprint": meta.get("fingerprint", ""), "data": data_id,
                        "seed": settings.seed, "image_size": meta["image"].image_size},
                 writer.path, OPTIONS)
    if not settings.skip_bad_images:  # skipped files lower the count
        check_resume(done, {"eval_images": eval_count}, writer.path, OPTIONS)
    wanted = {str(c): _bn_source(model, c, settings.calibration) for c in configs}
    rows = done[done["width"].astype(str).isin(wanted)]
    for source in set(wanted.values()):
        same = rows[rows["width"].astype(str).map(wanted) == source]
        check_resume(same, {"bn": source}, writer.path, OPTIONS)
    calibrated = rows[rows["bn"].astype(str) == "calibrated"]
    if "calib_augment" not in calibrated.columns:  # written before the option: plain images
        calibrated = calibrated.assign(calib_augment="none")
    if len(calibrated):
        train_count = len(open_split(data, "train"))
        calib_count = settings.calib_images or min(DEFAULT_CALIB_IMAGES, train_count)
        expected = {"calib_augment": settings.calib_augment}
        if not settings.skip_bad_images:
            expected["calib_images"] = calib_count
        check_resume(calibrated, expected, writer.path, OPTIONS)


def _signature(chunk, settings: SweepSettings, meta: dict, calib, val) -> dict:
    return {"widths": [str(c) for c in chunk], "fingerprint": meta.get("fingerprint", ""),
            "seed": settings.seed, "batch_size": settings.batch_size,
            "calibration": settings.calibration, "dense": settings.dense,
            "calib_images": len(calib) if calib is not None else 0, "eval_images": len(val),
            "calib_augment": settings.calib_augment}


def _run_pass(model, chunk, calib, val, settings, counter, bar, partial,
              ctx: Context = Context()) -> list[dict]:
    """Calibrate and evaluate the widths of ``chunk`` in one pass each over
    the calibration and evaluation data; returns their rows.

    Under torchrun each process calibrates on its share of the calibration
    batches and evaluates its shard of the images; statistics and counts are
    combined across processes. Only rank 0 keeps the partial-pass file, and
    there only the calibrated statistics (evaluation restarts with the pass)."""
    mode = settings.calibration
    to_calibrate = [c for c in chunk if mode == "always" or (mode == "auto" and not is_calibrated(model, c))]
    source = {str(c): ("calibrated" if c in to_calibrate else
                       "stored" if is_calibrated(model, c) else "running") for c in chunk}
    signature = _signature(chunk, settings, model.meta, calib, val)
    state = on_main(lambda: PassState.load(partial, signature) if partial else None, ctx) \
        or PassState(signature)
    if ctx.enabled:  # per-process progress cannot be resumed by another split
        state.batches, state.counts, state.seconds = 0, {}, {}
    save_progress = partial is not None and not ctx.enabled

    if to_calibrate and not state.calibrated:
        _calibrate_pass(model, to_calibrate, calib, settings, bar, state, ctx)
        if partial and ctx.is_main:
            state.save(partial)
    elif to_calibrate:
        set_bn_stats(model, state.bn_stats)

    model.eval()
    nets = {str(c): to_dense(model, c, fuse_activations=True) if settings.dense
            else SlicedAtWidth(model, c) for c in chunk}
    for config in chunk:
        state.counts.setdefault(str(config), Accuracy())
    remaining = val
    if ctx.enabled:
        remaining = Subset(val, shard_indices(len(val), ctx))
    elif state.batches:
        remaining = Subset(val, range(state.batches * settings.batch_size, len(val)))
    loader = make_loader(remaining, settings.batch_size, settings.workers)
    last_save = time.monotonic()
    previous = model.width_config
    try:
        for images, labels in _timed(_progress(loader, bar, f"evaluate {len(chunk)} widths",
                                               state.batches), state):
            seconds: dict[str, float] = {}
            evaluate_nets(nets, [(images, labels)], settings.device, state.counts, seconds)
            for key, value in seconds.items():
                state.add_seconds(f"eval:{key}", value)
            state.batches += 1
            if save_progress and time.monotonic() - last_save > settings.save_every:
                state.save(partial)
                last_save = time.monotonic()
    except BaseException:
        if save_progress:
            state.save(partial)
        raise
    finally:
        model.set_width(previous)
    del loader
    if ctx.enabled:
        keys = [str(c) for c in chunk]
        flat = sum_counts([v for k in keys for v in (state.counts[k].top1_correct,
                                                     state.counts[k].top5_correct,
                                                     state.counts[k].images)])
        state.counts = {k: Accuracy(*flat[3 * i:3 * i + 3]) for i, k in enumerate(keys)}
        settings = dataclasses.replace(settings, latency=settings.latency and ctx.is_main)
    return [_row(model, config, nets[str(config)], counter, state, source, settings, len(chunk))
            for config in chunk]


def _calibrate_pass(model, to_calibrate, calib, settings, bar, state: PassState,
                    ctx: Context = Context()) -> None:
    start, waited = time.perf_counter(), state.seconds.get("load", 0.0)
    if ctx.enabled:
        loader = make_loader(calib, settings.batch_size, settings.workers,
                             batch_sampler=BatchShard(len(calib), settings.batch_size, ctx))
        cal = DenseCalibrator(model, to_calibrate, allow_empty=True)
    else:
        loader = make_loader(calib, settings.batch_size, settings.workers)
        cal = (DenseCalibrator if settings.dense else Calibrator)(model, to_calibrate)
    with cal:
        for images, _ in _timed(_progress(loader, bar, f"calibrate {len(to_calibrate)} widths"), state):
            cal.update(images.to(settings.device))
    if ctx.enabled:
        average_across_processes(model, to_calibrate, cal.batches)
        cal.images = sum_counts([cal.images])[0]
    # waits for data are counted as load, not calibration
    total = time.perf_counter() - start - (state.seconds.get("load", 0.0) - waited)
    per_width = getattr(cal, "seconds", None)
    for config in to_calibrate:
        key = str(config)
        share = per_width[key] if per_width else total / len(to_calibrate)
        state.add_seconds(f"calib:{key}", share)
    state.calibrated = True
    state.calib_images = cal.images
    state.bn_stats = get_bn_stats(model, [str(c) for c in to_calibrate])


def _row(model, config, net, counter, state: PassState, source, settings, width_count) -> dict:
    key = str(config)
    cost = counter.at(config)
    acc = state.counts.get(key, Accuracy())
    calib_s = state.seconds.get(f"calib:{key}", 0.0)
    eval_s = state.seconds.get(f"eval:{key}", 0.0)
    load_s = state.seconds.get("load", 0.0) / width_count
    row = {"width": key, "mflops": round(cost.mflops, 3), "params_m": round(cost.params_m, 4),
           "top1": round(acc.top1, 3), "top5": round(acc.top5, 3),
           "calib_images": state.calib_images if source[key] == "calibrated" else 0,
           "calib_augment": settings.calib_augment if source[key] == "calibrated" else "",
           "bn": source[key], "seconds": round(load_s + calib_s + eval_s, 3),
           "load_seconds": round(load_s, 3), "calib_seconds": round(calib_s, 3),
           "eval_seconds": round(eval_s, 3)}
    if settings.latency:
        dense = net if settings.dense else to_dense(model, config)
        speed = measure_speed(dense, model.meta["image"].image_size, settings.device)
        row.update(latency_ms=round(speed.latency_ms, 4), throughput=round(speed.throughput, 1))
    return row


def _timed(batches: Iterable, state: PassState) -> Iterator:
    """Yield from ``batches``, adding the time spent waiting for each
    (decoding, transfer) to ``state.seconds['load']``."""
    iterator = iter(batches)
    while True:
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        state.add_seconds("load", time.perf_counter() - start)
        yield batch


def _progress(loader, bar, what: str, done: int = 0):
    """Show batch progress inside the width bar's postfix."""
    total = len(loader) + done
    for i, batch in enumerate(loader, done + 1):
        if not bar.disable:
            bar.set_postfix_str(f"{what}: batch {i}/{total}", refresh=True)
        yield batch
