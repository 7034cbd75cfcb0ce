"""Greedy slimming of a trained US-Net under a FLOPs or latency budget.

The method of AutoSlim, on a one-shot US-Net: start at the largest width;
at each step build one candidate per group of layers (a stage, or a single
slimmable layer; MobileNet v2's residual chains are one slot already), each
slimming that group by ``step`` of the width ratio; BN-calibrate every
candidate and evaluate it on a *search subset*, all candidates in one pass
over in-memory batches, each batch running the layers a candidate shares
with the current config once (:mod:`usspectrum.spectrum.prefix_tree`); keep the
candidate that loses the least top-1 and go on until every group is at the
model's smallest trained width.

Images: the search subset and the calibration images are disjoint, seeded
draws from ``train/`` (the calibration images augmented as in training, see
:func:`usspectrum.io.data.calibration_images`); ``val/`` is never used to choose, only to report the
chosen configs (:func:`resolve_budgets`).

Tie-break: the smallest loss of search top-1; among equal losses the
candidate that saves more FLOPs, then the earlier group. With ``per_flop``
the loss is divided by the MFLOPs saved (cheapest accuracy per FLOP).
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
import torch.nn as nn
from torch.utils.data import Subset
from tqdm.auto import tqdm

from ..runtime.allocator import keep_freed_memory
from ..io.checkpoint import load_checkpoint
from ..io.data import (check_calib_augment, check_classes, checkpoint_calibration_images,
                   eval_transform, fitted_count, make_loader, open_split)
from ..nn.folding import to_dense
from ..errors import UsageError
from ..models.base import has_named_switches
from .calibration import DenseCalibrator
from .evaluate import evaluate
from .flops import FlopCounter
from ..io.identity import check_resume, data_identity
from ..nn.layers import slim_batchnorms
from ..io.lock import exclusive_writer
from ..io.results import RowWriter
from ..nn.width import WidthConfig, format_ratio, parse_width_list

GRANULARITIES = ("stage", "layer")
COLUMNS = ["step", "group", "config", "mflops", "params_m", "top1", "loss", "candidates",
           "seconds", "granularity", "step_ratio", "per_flop", "search_images",
           "calib_images", "calib_augment", "seed", "fingerprint", "data"]
DEFAULT_SEARCH_IMAGES, DEFAULT_CALIB_IMAGES = 2000, 1000
OPTIONS = {"granularity": "--granularity", "step_ratio": "--step", "per_flop": "--per-flop",
           "search_images": "--search-images", "calib_images": "--calib-images",
           "calib_augment": "--calib-augment", "seed": "--seed",
           "fingerprint": "checkpoint fingerprint", "data": "data"}
_TOL = 1e-6


@dataclass
class SearchSettings:
    """How the greedy search runs (see the module docstring)."""

    granularity: str = field(default="stage", metadata={"help": 'Slim whole stages, or every slimmable layer on its own.'})
    step: float = field(default=0.05, metadata={"help": "Width-ratio decrement of one slimming step (repeated until the group's channel count changes)."})
    per_flop: bool = field(default=False, metadata={"help": 'Rank candidates by accuracy lost per MFLOP saved.'})
    search_images: int | None = field(default=None, metadata={"help": 'Held-out training images that rank the candidates [default: 2000, fewer on a small train/].'})
    calib_images: int | None = field(default=None, metadata={"help": "Other training images for each candidate's BN calibration [default: 1000, a third of a small train/]."})
    calib_augment: str = field(default="train", metadata={"help": 'train: calibrate BN on training images with the training augmentation; none: on plain images.'})
    batch_size: int = field(default=200, metadata={"help": 'Images per batch.'})
    seed: int = field(default=0, metadata={"help": 'Seed of the held-out draws.'})
    workers: int | None = field(default=None, metadata={"help": 'Data-loading processes [default: cores - 1, at most 4].'})
    progress: bool = field(default=True, metadata={"help": 'Show progress bars.'})

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise UsageError(f"--granularity must be one of {', '.join(GRANULARITIES)}, "
                             f"got {self.granularity!r}")
        check_calib_augment(self.calib_augment)
        if not 0 < self.step < 1:
            raise UsageError(f"--step must be a ratio in (0, 1), such as 0.05; got {self.step}")
        for name in ("search_images", "calib_images", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")


def search_groups(model: nn.Module, granularity: str) -> list[tuple[str, list[int]]]:
    """``(name, slot indices)`` of the groups slimmed together: the model's
    stages (the stem is its own group), or every slot."""
    if granularity == "layer":
        return [(slot.name, [i]) for i, slot in enumerate(model.slots)]
    stages: dict[int, list[int]] = {}
    for i, slot in enumerate(model.slots):
        stages.setdefault(slot.stage, []).append(i)
    return [("stem" if s == 0 else f"stage {s}", idx) for s, idx in sorted(stages.items())]


def held_out_counts(size: int, calib: int | None, search: int | None,
                    where: str = "train/") -> tuple[int, int]:
    """(calibration, search) image counts: those set, the defaults for the
    others, lowered to fit a small split (a third for calibration, the rest
    for the search) with a note."""
    if calib is None:
        wanted = DEFAULT_CALIB_IMAGES if search is None else min(DEFAULT_CALIB_IMAGES,
                                                                 max(1, size - search))
        calib = fitted_count(None, wanted, max(1, size // 3) if search is None else wanted,
                             "--calib-images", where)
    if search is None:
        search = fitted_count(None, DEFAULT_SEARCH_IMAGES, max(1, size - calib),
                              "--search-images", where)
    return calib, search


def held_out_indices(size: int, calib: int, search: int, seed: int) -> tuple[list[int], list[int]]:
    """Disjoint seeded draws from ``size`` training images: (calibration, search)."""
    if calib + search > size:
        raise UsageError(f"--calib-images {calib} and --search-images {search} need "
                         f"{calib + search} training images, but train/ has {size}; use fewer")
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[:calib]), sorted(perm[calib:calib + search])


def slim_group(model: nn.Module, ratios: list[float], group: list[int], step: float,
               lowest: float) -> list[float] | None:
    """``ratios`` with ``group`` lowered by ``step`` until its channel counts
    change (rounding can hide a step); None when it is at ``lowest``."""
    slots = model.slots
    before = [slots[i].active(ratios[i]) for i in group]
    new = list(ratios)
    while True:
        lowered = [round(max(lowest, new[i] - step), 6) for i in group]
        if all(abs(a - b) < _TOL for a, b in zip(lowered, (new[i] for i in group))):
            return None  # already at the bottom without a change
        for i, r in zip(group, lowered):
            new[i] = r
        if [slots[i].active(new[i]) for i in group] != before:
            return new


def _config(ratios: Sequence[float]) -> WidthConfig:
    return WidthConfig.per_layer(ratios)


class _InMemory:
    """Images decoded (and augmented) once, as ready batches."""

    def __init__(self, dataset, batch_size: int, workers, what: str, progress: bool) -> None:
        loader = make_loader(dataset, batch_size, workers)
        self.batches = [(x, y) for x, y in tqdm(loader, desc=f"load {what}", unit="batch",
                                                 disable=not progress, leave=False)]

    def images(self):
        return (x for x, _ in self.batches)


def check_budgets(counter: FlopCounter, model: nn.Module, budgets: Sequence[float]) -> None:
    """Budgets must lie between the smallest and the largest width's MFLOPs."""
    lo, hi = model.width_range
    smallest, largest = counter.at(lo).mflops, counter.at(hi).mflops
    for b in budgets:
        if b < smallest:
            raise UsageError(f"budget {b} MFLOPs is below the smallest width's {smallest:.3f} "
                             f"MFLOPs (every layer at {format_ratio(lo)}); raise it")
        if b > largest:
            raise UsageError(f"budget {b} MFLOPs is above the largest width's {largest:.3f} "
                             f"MFLOPs (width {format_ratio(hi)}); no slimming is needed below it")


def search(checkpoint: str | os.PathLike | nn.Module, data: str | os.PathLike,
           out: str | os.PathLike, settings: SearchSettings | None = None,
           budgets: Sequence[float] = (), overwrite: bool = False,
           **overrides) -> pd.DataFrame:
    """Run (or resume) the greedy path of ``checkpoint``; one CSV row per step
    in ``out``, written as it is measured. Stops at the model's smallest
    width, or once below the smallest of ``budgets`` (MFLOPs). Returns the path."""
    settings = dataclasses.replace(settings or SearchSettings(), **overrides)
    keep_freed_memory()
    model = (checkpoint if isinstance(checkpoint, nn.Module)
             else load_checkpoint(checkpoint)).eval()
    lo, hi = model.width_range
    if has_named_switches(model):
        raise UsageError(f"{model.meta.get('path', 'the model')} is an AutoSlim net with fixed "
                         f"switches ({', '.join(model.switches)}), itself a search's answer; "
                         "search a US-Net and compare with --reference "
                         f"{model.arch['name']}")
    if hi - lo < _TOL:
        raise UsageError(f"{model.meta.get('path', 'the model')} was trained at width "
                         f"{format_ratio(hi)} only ({model.kind}); the search needs a network "
                         "trained over a range of widths, such as a US-Net")
    counter = FlopCounter(model, model.meta["image"].image_size, scaled=True)  # fast counts
    if budgets:
        check_budgets(counter, model, budgets)
    train = open_split(data, "train", eval_transform(model.meta["image"]))
    check_classes(train, model.meta.get("class_names"), f"{data}/train",
                  model.meta.get("num_outputs"))
    counts = held_out_counts(len(train), settings.calib_images, settings.search_images,
                             f"{data}/train")
    with exclusive_writer(out):
        if overwrite:
            Path(out).unlink(missing_ok=True)
        writer = RowWriter(out, COLUMNS, required=("config", "fingerprint"),
                           numeric=("step", "mflops", "top1"), key=("step",))
        fixed = {"granularity": settings.granularity, "step_ratio": settings.step,
                 "per_flop": settings.per_flop, "search_images": counts[1],
                 "calib_images": counts[0], "calib_augment": settings.calib_augment,
                 "seed": settings.seed, "fingerprint": model.meta.get("fingerprint", ""),
                 "data": data_identity(data)}
        done = writer.existing()
        check_resume(done, fixed, out, OPTIONS)
        path = GreedyPath(model, counter, settings, budgets, writer, fixed)
        if not path.resume(done):
            path.load_images(data, train, counts)
            path.run()
        return writer.existing()


class GreedyPath:
    """The state of one greedy search: the current config, its top-1 on the
    search images, and how each step is measured and written."""

    def __init__(self, model: nn.Module, counter: FlopCounter, settings: SearchSettings,
                 budgets: Sequence[float], writer: RowWriter, fixed: dict) -> None:
        self.model, self.counter, self.settings = model, counter, settings
        self.budgets, self.writer, self.fixed = budgets, writer, fixed
        self.lo, hi = model.width_range
        self.groups = search_groups(model, settings.granularity)
        self.ratios = [hi] * len(model.slots)
        self.step_no, self.current = 0, None

    def resume(self, done: pd.DataFrame) -> bool:
        """Continue after ``done``'s last step; True when the path is complete."""
        if not len(done):
            return False
        last = done.iloc[-1]
        self.ratios = list(WidthConfig.parse(last["config"]).layer_ratios)
        self.step_no, self.current = int(last["step"]), float(last["top1"])
        return _finished(self.model, self.ratios, self.groups, self.settings, self.lo,
                         self.budgets, float(last["mflops"]))

    def load_images(self, data, train, counts: tuple[int, int]) -> None:
        """The calibration and search images, disjoint draws from train/, in memory."""
        s = self.settings
        calib_idx, search_idx = held_out_indices(len(train), *counts, s.seed)
        self.calib = _InMemory(checkpoint_calibration_images(data, self.model.meta, None, s.seed,
                                                             s.calib_augment, calib_idx),
                               s.batch_size, s.workers, "calibration images", s.progress)
        self.held = _InMemory(Subset(train, search_idx), s.batch_size, s.workers,
                              "search images", s.progress)

    def measure(self, base: WidthConfig, configs: list[WidthConfig]) -> dict[str, float]:
        """Search top-1 of ``base`` and each candidate, each BN-calibrated."""
        keys = [str(c) for c in (base, *configs)]
        with DenseCalibrator(self.model, configs, base=base) as cal:
            for images in self.calib.images():
                cal.update(images)
        results = evaluate(self.model, self.held.batches, [base, *configs], shares=base)
        for _, bn in slim_batchnorms(self.model):  # candidates' statistics are not kept
            for k in keys:
                bn.calibrated.pop(k, None)
        return {k: results[k].top1 for k in keys}

    def write(self, group: str, config: WidthConfig, top1: float, loss: float,
              candidates: int, seconds: float) -> None:
        cost = self.counter.at(config)
        self.writer.append({"step": self.step_no, "group": group, "config": str(config),
                            "mflops": round(cost.mflops, 3), "params_m": round(cost.params_m, 4),
                            "top1": round(top1, 4), "loss": round(loss, 4),
                            "candidates": candidates, "seconds": round(seconds, 2),
                            **self.fixed})

    def run(self) -> None:
        """Measure the start (unless resumed), then step until done."""
        bar = tqdm(desc="greedy search", unit="step", disable=not self.settings.progress)
        if self.current is None:
            start, config = time.perf_counter(), _config(self.ratios)
            self.current = self.measure(config, [])[str(config)]
            self.write("", config, self.current, 0.0, 1, time.perf_counter() - start)
        while self.step():
            bar.update(1)
            bar.set_postfix(mflops=f"{self.counter.at(_config(self.ratios)).mflops:.2f}",
                            top1=f"{self.current:.2f}")
        bar.close()

    def step(self) -> bool:
        """Slim the group that costs least; False when nothing is left to slim
        or the path is below the smallest budget."""
        start = time.perf_counter()
        candidates = []
        for order, (name, idx) in enumerate(self.groups):
            new = slim_group(self.model, self.ratios, idx, self.settings.step, self.lo)
            if new is not None:
                candidates.append((order, name, new))
        if not candidates:
            return False
        configs = [_config(r) for _, _, r in candidates]
        accuracy = self.measure(_config(self.ratios), configs)
        here = self.counter.at(_config(self.ratios)).mflops

        def score(item):
            (order, _, new), config = item
            saved = here - self.counter.at(config).mflops
            loss = self.current - accuracy[str(config)]
            key = loss / max(saved, 1e-9) if self.settings.per_flop else loss
            return (round(key, 9), -saved, order)

        (order, name, new), config = min(zip(candidates, configs), key=score)
        self.step_no += 1
        top1 = accuracy[str(config)]
        self.write(name, config, top1, self.current - top1, len(candidates),
                   time.perf_counter() - start)
        self.ratios, self.current = new, top1
        return not (self.budgets and self.counter.at(config).mflops < min(self.budgets))


def _finished(model, ratios, groups, settings, lo, budgets, mflops) -> bool:
    if budgets and mflops < min(budgets):
        return True
    return all(slim_group(model, ratios, idx, settings.step, lo) is None for _, idx in groups)


def pick_for_budgets(path: pd.DataFrame, budgets: Sequence[float],
                     column: str = "mflops") -> pd.DataFrame:
    """For each budget the path's first (largest) config whose ``column``
    is within it."""
    rows = []
    for b in budgets:
        fits = path[path[column] <= b + _TOL]
        if not len(fits):
            raise UsageError(f"no config of the search path fits the budget {b} ({column}); "
                             "the path stops above it: rerun the search with this budget")
        rows.append({"budget": b, **fits.iloc[0][["step", "config", "mflops", "top1"]].to_dict()})
    return pd.DataFrame(rows)


def path_latency(model: nn.Module, path: pd.DataFrame, image_size: int,
                 repeats: int = 30) -> pd.Series:
    """Batch-1 latency (ms, median) of every config of the path, on this machine."""
    from .latency import measure_latency

    return pd.Series([measure_latency(to_dense(model, c, fuse_activations=True), image_size,
                                      repeats=repeats) for c in path["config"]], index=path.index)


def nearest_uniform(counter: FlopCounter, model: nn.Module, mflops: float,
                    step: float = 0.025) -> tuple[str, float]:
    """The uniform width (on a grid of ``step``) with the fewest MFLOPs at or
    above ``mflops``."""
    lo, hi = model.width_range
    count = int(round((hi - lo) / step)) + 1
    for i in range(count):
        width = WidthConfig(min(hi, lo + i * step))
        cost = counter.at(width).mflops
        if cost >= mflops - 1e-3:
            return str(width), cost
    return str(WidthConfig(hi)), counter.at(hi).mflops


def budget_report(checkpoint: str | os.PathLike, data: str | os.PathLike, path: pd.DataFrame,
                  budgets: Sequence[float], out_dir: str | os.PathLike, *,
                  latency_budgets: Sequence[float] = (), stage_csv: str | None = None,
                  sweep_settings=None, path_points: int = 12, plot: bool = True,
                  reference: Sequence[str] = ()) -> pd.DataFrame:
    """Val top-1 of the searched config at each budget and of the uniform
    width with the nearest FLOPs at or above it; ``search-budgets.csv`` and a
    plot of the greedy path against the uniform spectrum (and the per-stage
    curves of ``stage_csv``, a slim-stage CSV, and the published curves of
    ``reference``) in ``out_dir``."""
    from ..io.plot import plot_spectrum, stage_series
    from ..io.results import write_table
    from .sweep import SweepSettings, default_widths, sweep

    out_dir = Path(out_dir)
    model = load_checkpoint(checkpoint).eval()
    counter = FlopCounter(model, model.meta["image"].image_size)
    chosen = []
    if budgets:
        chosen.append(pick_for_budgets(path, budgets).assign(kind="mflops"))
    if latency_budgets:
        timed = path.assign(latency_ms=path_latency(model, path, counter.image_size))
        widest = float(timed["latency_ms"].iloc[0])
        for b in latency_budgets:
            if b > widest:
                raise UsageError(f"latency budget {b} ms is above the widest config's "
                                 f"{widest:.2f} ms on this machine; no slimming is needed")
        picked = pick_for_budgets(timed, latency_budgets, "latency_ms").assign(kind="latency_ms")
        chosen.append(picked)
    table = pd.concat(chosen, ignore_index=True) if chosen else pd.DataFrame(
        columns=["budget", "step", "config", "mflops", "top1", "kind"])
    table = table.rename(columns={"top1": "search_top1"})
    uniform = [nearest_uniform(counter, model, m) for m in table["mflops"]]
    table["uniform_width"] = [w for w, _ in uniform]
    table["uniform_mflops"] = [round(m, 3) for _, m in uniform]
    # one val sweep: chosen configs, their uniform neighbours, points along the
    # path and the uniform spectrum, every one BN-calibrated on train images
    every = max(1, len(path) // max(1, path_points))
    along = list(path["config"].iloc[::every]) + [path["config"].iloc[-1]]
    spectrum = [str(c) for c in parse_width_list(default_widths(model))]
    widths = list(dict.fromkeys([*table["config"], *table["uniform_width"], *along, *spectrum]))
    settings = sweep_settings or SweepSettings()
    val = sweep(model, data, widths, out_dir / "search-val.csv",
                dataclasses.replace(settings, calibration="always"), label="search")
    top1 = dict(zip(val["width"].astype(str), val["top1"]))
    table["val_top1"] = [top1[c] for c in table["config"]]
    table["uniform_val_top1"] = [top1[w] for w in table["uniform_width"]]
    table["gain"] = (table["val_top1"] - table["uniform_val_top1"]).round(2)
    write_table(table, out_dir / "search-budgets.csv")
    if plot:
        mflops = dict(zip(val["width"].astype(str), val["mflops"]))
        frames = [pd.DataFrame({"model": "greedy search (val)", "width": "path",
                                "mflops": [mflops[c] for c in dict.fromkeys(along)],
                                "top1": [top1[c] for c in dict.fromkeys(along)]}),
                  pd.DataFrame({"model": "uniform", "width": "uniform",
                                "mflops": [mflops[w] for w in spectrum],
                                "top1": [top1[w] for w in spectrum]})]
        if stage_csv:
            stages = pd.read_csv(stage_csv, dtype={"width": str})
            stages = stages[stages["width"].str.contains("@s")]
            frames.append(pd.DataFrame({"model": stages["width"].map(stage_series),
                                        "width": "stage", "mflops": stages["mflops"],
                                        "top1": stages["top1"]}))
        plot_spectrum(pd.concat(frames, ignore_index=True), out_dir / "search",
                      title="Greedy slimming vs uniform widths (val)", reference=reference)
    return table
