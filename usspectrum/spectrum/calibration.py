"""BatchNorm post-statistics per width (BN calibration).

For each width: statistics are reset, the calibration images run through the
network in BN-train mode with no gradients, and the *cumulative* average of
the batch statistics is kept (``momentum=None`` semantics). Nothing else in
the model changes. Many widths are calibrated in one pass: every batch runs
through each width in turn, each width with its own accumulator.
"""
from __future__ import annotations

import time
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..runtime.allocator import keep_freed_memory
from ..nn.layers import slim_batchnorms
# the stored-statistics API, re-exported beside the calibrators that fill it
from ..nn.bn_stats import (BNStats, calibrated_widths, clear_bn_stats,  # noqa: F401
                           get_bn_stats, is_calibrated, set_bn_stats)
from ..nn.width import WidthConfig, WidthLike
from .prefix_tree import PrefixTree

class Calibrator:
    """Accumulates BN statistics for several widths over batches.

    Use as ``with Calibrator(model, widths) as cal: for x in batches: cal.update(x)``;
    statistics are stored on leaving the block without an error."""

    def __init__(self, model: nn.Module, widths: Sequence[WidthLike]) -> None:
        self.model = model
        self.configs = [WidthConfig.coerce(w) for w in widths]
        self.images = 0

    def __enter__(self) -> "Calibrator":
        self._was_training = self.model.training
        self._previous = getattr(self.model, "width_config", WidthConfig(1.0))
        self.model.eval()  # BN layers calibrate regardless; dropout etc. stay off
        keys = [str(c) for c in self.configs]
        for _, bn in slim_batchnorms(self.model):
            bn.start_calibration(keys)
        return self

    @torch.no_grad()
    def update(self, images: torch.Tensor) -> None:
        for config in self.configs:
            self.model.set_width(config)
            self.model(images)
        self.images += images.shape[0]

    def __exit__(self, exc_type, exc, tb) -> None:
        for _, bn in slim_batchnorms(self.model):
            if exc_type is None:
                bn.finish_calibration()
            else:
                bn.abort_calibration()
        self.model.set_width(self._previous)
        self.model.train(self._was_training)


class DenseCalibrator:
    """The fast path of :class:`Calibrator`, with the same interface and the
    same statistics (up to float rounding).

    Each width runs as its own dense, channels-last copy (see
    :mod:`usspectrum.nn.folding`) whose BN layers are :class:`BatchStats`
    accumulators; on leaving the block their averages go into the slimmable
    model's calibrated store. ``seconds[key]`` adds up the compute time of
    each width.

    With ``base``, the widths are candidates that differ from ``base`` in
    some layers (a greedy-search step): every batch runs through ``base``
    once and each width branches off where its layers first differ
    (:class:`usspectrum.spectrum.prefix_tree.PrefixTree`), so the layers in
    front are computed, and their statistics counted, once; ``seconds`` then
    holds the whole tree's time under ``base``'s key.

    Before the first batch a probe of a few images gives every BN a rough
    mean, which is subtracted through the bias of the conv in front (and
    added back at the end): the statistics are then sums of values near zero,
    which float32 adds up without losing digits."""

    probe_images = 16

    def __init__(self, model: nn.Module, widths: Sequence[WidthLike],
                 allow_empty: bool = False, base: WidthLike | None = None) -> None:
        self.model = model
        self.base = None if base is None else WidthConfig.coerce(base)
        configs = [WidthConfig.coerce(w) for w in widths]
        if self.base is not None:
            configs = [self.base] + [c for c in configs if str(c) != str(self.base)]
        self.configs = configs
        self.images = self.batches = 0
        self.seconds = {str(c): 0.0 for c in self.configs}
        self.allow_empty = allow_empty  # a process of a distributed run may get no batch
        self.tree: PrefixTree | None = None

    def __enter__(self) -> "DenseCalibrator":
        self.nets = {str(c): calibration_net(self.model, c) for c in self.configs}
        self._shifted: set[str] = set()
        return self

    @torch.no_grad()
    def update(self, images: torch.Tensor) -> None:
        if self.base is not None:
            self._update_tree(images)
        else:
            for key, net in self.nets.items():
                start = time.perf_counter()
                if key not in self._shifted:
                    shift_by_probe(net, images[:self.probe_images])
                    self._shifted.add(key)
                net(images)
                self.seconds[key] += time.perf_counter() - start
        self.images += images.shape[0]
        self.batches += 1

    def _update_tree(self, images: torch.Tensor) -> None:
        start = time.perf_counter()
        base = str(self.base)
        if self.tree is None:
            # each net shifts its own BN inputs first (a shared layer must not
            # be shifted twice); the shifts of shared layers are the same
            for net in self.nets.values():
                shift_by_probe(net, images[:self.probe_images])
            self.tree = PrefixTree(base, self.nets[base],
                                   {k: n for k, n in self.nets.items() if k != base})
        self.tree(images)
        self.seconds[base] += time.perf_counter() - start

    def __exit__(self, exc_type, exc, tb) -> None:
        nets, self.nets, self.tree = self.nets, {}, None
        if exc_type is not None:
            return
        if not self.images and not self.allow_empty:
            raise RuntimeError("calibration saw no batch")
        for key, net in nets.items():
            store_statistics(self.model, key, net)


def calibration_net(model: nn.Module, config: WidthConfig) -> nn.Module:
    """The dense copy of ``model`` at ``config`` whose BN layers are
    :class:`BatchStats` accumulators (each taking over the ReLU6 after it)."""
    from ..nn.folding import chains, to_dense

    net = to_dense(model, config, fold_bn=False)
    for chain in chains(net):
        layers = list(chain.named_children())
        for (name, layer), (next_name, after) in zip(layers, layers[1:] + [(None, None)]):
            if isinstance(layer, nn.BatchNorm2d):
                clamp = ((after.min_val, after.max_val) if isinstance(after, nn.Hardtanh)
                         else None)
                setattr(chain, name, BatchStats(layer, clamp))
                if clamp is not None:
                    setattr(chain, next_name, nn.Identity())  # keeps the layer names
    return net


def store_statistics(model: nn.Module, key: str, net: nn.Module) -> None:
    """Put the averages of ``net``'s :class:`BatchStats` layers (a
    :func:`calibration_net`) into ``model``'s calibrated store under ``key``."""
    bns = dict(slim_batchnorms(model))
    for dense_name, slim_name in net.bn_sources.items():
        bns[slim_name].calibrated[key] = net.get_submodule(dense_name).statistics()


class BatchStats(nn.Module):
    """BN in training mode that keeps the cumulative average of its batch
    statistics (mean, unbiased variance), like ``nn.BatchNorm2d`` with
    ``momentum=None``, but with accurate sums.

    PyTorch's channels-last CPU kernel for batch statistics is fast, but it
    adds each thread's values one after another in float32: over a 200-image
    batch of 32x32 maps its variances were off by 2.4e-5 (relative) and its
    means by 1.5e-7 standard deviations against float64, 100 times the error
    of a blocked sum. Here the batch goes through that kernel in chunks of at
    most ``rows_per_chunk`` values per channel and the chunks' means and
    variances are merged in float64 (law of total variance); small
    activations use ``Tensor.sum`` (see :func:`batch_moments`). ``shift`` is
    what the conv in front already subtracted (see :class:`DenseCalibrator`).
    ``clamp``: the ReLU6 that follows, applied in place."""

    rows_per_chunk = 8192

    def __init__(self, bn: nn.BatchNorm2d, clamp: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = bn.weight, bn.bias, bn.eps
        self.clamp = clamp  # the ReLU6 after the BN, applied in place
        self.shift = torch.zeros_like(bn.running_mean)
        self.reset()

    def reset(self) -> None:
        self.mean_sum = torch.zeros_like(self.shift, dtype=torch.float64)
        self.var_sum = torch.zeros_like(self.mean_sum)
        self.batches = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.numel() // x.shape[1]
        if n < 2:
            raise ValueError("BN calibration needs more than one value per channel")
        mean, var = batch_moments(x, self.rows_per_chunk)
        self.mean_sum += mean + self.shift
        self.var_sum += var * (n / (n - 1))
        self.batches += 1
        return self._normalize(x, mean, var)

    def _normalize(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(x, mean.to(x.dtype), var.to(x.dtype), self.weight, self.bias,
                         False, 0.0, self.eps)
        return y if self.clamp is None else F.hardtanh(y, *self.clamp, inplace=True)

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The averaged (mean, variance) in the layer's dtype."""
        batches = max(1, self.batches)
        return ((self.mean_sum / batches).to(self.shift.dtype),
                (self.var_sum / batches).to(self.shift.dtype))


def batch_moments(x: torch.Tensor, rows_per_chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of ``x`` (N, C, ...) over all
    but dim 1, in float64 (see :class:`BatchStats`).

    Large activations go through PyTorch's batch-statistics kernel in chunks
    of images; small ones, and ones with fewer channels than a vector
    register holds (where that kernel is slow), through ``Tensor.sum``."""
    if x.shape[1] < 16 or x.numel() < (1 << 21):
        n = x.numel() // x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        mean = x.sum(dims) / n
        var = ((x * x).sum(dims) / n - mean * mean).clamp_min_(0)
        return mean.double(), var.double()
    per_image = x.numel() // (x.shape[0] * x.shape[1])
    step = max(1, rows_per_chunk // max(1, per_image))
    chunks = x.split(step)
    parts = [torch.batch_norm_update_stats(chunk, None, None, 0.0) for chunk in chunks]
    means = torch.stack([m for m, _ in parts]).double()
    variances = torch.stack([v for _, v in parts]).double()
    sizes = torch.tensor([len(chunk) for chunk in chunks], dtype=torch.float64)
    weights = (sizes / sizes.sum()).unsqueeze(1)
    mean = (weights * means).sum(0)
    var = (weights * (variances + (means - mean).square())).sum(0)
    return mean, var


def shift_by_probe(net: nn.Module, probe: torch.Tensor) -> None:
    """Run ``probe`` through ``net``, then move each :class:`BatchStats`
    layer's probe mean into the bias of the conv feeding it and reset it."""
    from ..nn.folding import chains

    net(probe)
    for chain in chains(net):
        previous = None
        for layer in chain.children():
            if isinstance(layer, BatchStats):
                if isinstance(previous, nn.Conv2d):
                    shift = (layer.mean_sum / layer.batches).to(layer.shift.dtype)
                    bias = previous.bias if previous.bias is not None else torch.zeros_like(shift)
                    previous.bias = nn.Parameter(bias.detach() - shift, requires_grad=False)
                    layer.shift = layer.shift + shift
                layer.reset()
            previous = layer


def average_across_processes(model: nn.Module, widths: Sequence[WidthLike], batches: int) -> None:
    """Under torchrun: each process holds, per width, the cumulative average
    of the batch statistics of its own ``batches`` batches; replace them with
    the average over every process's batches, which is what one process
    calibrating on all the batches stores (up to float rounding)."""
    from ..runtime.distributed import all_sum

    keys = [str(WidthConfig.coerce(w)) for w in widths]
    stats = get_bn_stats(model, keys)
    pieces = [t.double() * batches for k in keys for pair in stats[k].values() for t in pair]
    total = all_sum(torch.cat([*(p.reshape(-1) for p in pieces),
                               torch.tensor([float(batches)], dtype=torch.float64)]))
    count, offset = total[-1], 0
    if count < 1:
        raise RuntimeError("calibration saw no batch in any process")
    merged: BNStats = {}
    for k in keys:
        merged[k] = {}
        for name, (mean, var) in stats[k].items():
            n = mean.numel()
            merged[k][name] = ((total[offset:offset + n] / count).to(mean.dtype),
                               (total[offset + n:offset + 2 * n] / count).to(var.dtype))
            offset += 2 * n
    device = next(model.parameters()).device
    set_bn_stats(model, {k: {n: (m.to(device), v.to(device)) for n, (m, v) in layers.items()}
                         for k, layers in merged.items()})


def calibrate(model: nn.Module, batches: Iterable, widths: Sequence[WidthLike],
              device: str | torch.device | None = None, dense: bool = True) -> int:
    """Calibrate BN statistics of ``model`` at every width over ``batches``
    (tensors or ``(images, labels)`` pairs). Returns the number of images.

    ``dense=False`` runs the sliced model itself (slower, same statistics)."""
    keep_freed_memory()
    device = device or next(model.parameters()).device
    with (DenseCalibrator if dense else Calibrator)(model, widths) as cal:
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            cal.update(images.to(device, non_blocking=True))
    return cal.images
