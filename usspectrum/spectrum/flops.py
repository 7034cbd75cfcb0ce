"""FLOPs and parameter counts in the US-Nets paper's convention.

FLOPs are multiply-adds, counted by fvcore: convolutions, linear layers and
average pools (one per input element, global or strided, as the authors'
profiler counts them). BatchNorm and activations
are not counted (BN folds into the conv at inference). Parameters are those
the active sub-network uses: the sliced conv/linear weights and biases and
the active BN scale/shift.
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd

import torch
import torch.nn as nn

from ..errors import UsageError
from ..nn.layers import SlimBatchNormBase, SlimConv2d, SlimLinear
from ..nn.width import WidthConfig, WidthLike


@dataclass(frozen=True)
class Cost:
    """What one width config of a model costs."""

    flops: int
    params: int
    by_module: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def mflops(self) -> float:
        return self.flops / 1e6

    @property
    def params_m(self) -> float:
        return self.params / 1e6


def _module_params(module: nn.Module, in_channels: int) -> int:
    if isinstance(module, SlimConv2d):
        out, in_per_group, _ = module.active_shape(in_channels)
        kh, kw = module.kernel_size
        return out * in_per_group * kh * kw + (out if module.bias is not None else 0)
    if isinstance(module, SlimLinear):
        out = module.out_features if module.out_active is None else module.out_active
        return out * in_channels + (out if module.bias is not None else 0)
    if isinstance(module, SlimBatchNormBase):
        return 2 * in_channels
    return sum(p.numel() for p in module.parameters(recurse=False))


class FlopCounter:
    """Counts a slimmable model's cost at any width config.

    Configure it once with the model and input size, then ask
    :meth:`at` for each width; results are cached by the per-layer channel
    counts, so configs that round to the same network are counted once."""

    def __init__(self, model: nn.Module, image_size: int | None = None,
                 scaled: bool = False) -> None:
        self.model = model
        self.image_size = int(image_size or getattr(model, "default_image_size", 224))
        if self.image_size < 8:
            raise UsageError(f"image size {self.image_size} is too small; use at least 8")
        self._cache: dict[tuple[int, ...], Cost] = {}
        # scaled: fvcore counts each layer once, at full width; other widths
        # scale those counts by their channel counts (exact for convs, linear
        # layers and pooling, ~100x faster than a trace per width)
        self.scaled = scaled
        self._full: dict[str, tuple[int, int, int]] | None = None

    def at(self, width: WidthLike) -> Cost:
        """Cost of the model at ``width``; the model's own width is restored."""
        model = self.model
        previous = model.width_config
        model.set_width(WidthConfig.coerce(width))
        try:
            key = tuple(model.active_channels())
            if key not in self._cache:
                self._cache[key] = self._count()
            return self._cache[key]
        finally:
            model.set_width(previous)

    def _count(self) -> Cost:
        try:
            self.model.layer_sequence()
        except NotImplementedError:
            return self._count_sliced()
        return self._count_scaled() if self.scaled else self._count_dense()

    def _count_scaled(self) -> Cost:
        """A width's cost from the full width's per-layer fvcore counts: a
        conv's multiply-adds are proportional to its input channels per group
        times its output channels, a linear layer's to inputs times outputs,
        the pool's to its channels."""
        from ..nn.folding import to_dense

        model = self.model
        if self._full is None:
            current = model.width_config
            model.set_width(model.width_range[1])
            try:
                net = to_dense(model, fold_bn=False, channels_last=False)
                _, layers = self._analyse(net)
                self._full = {key: (int(layers.get(key, 0)), a, b)
                              for key, a, b in _scaling_channels(net, self._input(net))}
            finally:
                model.set_width(current)
        net = to_dense(model, fold_bn=False, channels_last=False)
        total = 0
        for key, a, b in _scaling_channels(net, self._input(net)):
            flops, full_a, full_b = self._full[key]
            total += flops * a * b // max(1, full_a * full_b)
        params = sum(p.numel() for p in net.parameters())
        return Cost(int(total), int(params), {"": int(total)})

    def _count_dense(self) -> Cost:
        """Trace the width's dense copy (BN kept, not folded): the same
        operations as the sliced model, traced about 4x faster."""
        from ..nn.folding import to_dense

        net = to_dense(self.model, fold_bn=False, channels_last=False)
        total, layers = self._analyse(net)
        by_module: Counter = Counter()
        for key, flops in layers.items():
            if key not in net.sources:
                continue
            name = net.sources[key]
            parts = name.split(".")
            for i in range(len(parts) + 1):
                by_module[".".join(parts[:i])] += flops
        by_module[""] = total
        params = sum(p.numel() for p in net.parameters())
        return Cost(int(total), int(params), dict(by_module))

    def _count_sliced(self) -> Cost:
        model = self.model
        was_training = model.training
        model.eval()
        params = 0

        def hook(module: nn.Module, inputs: tuple, _output) -> None:
            nonlocal params
            params += _module_params(module, inputs[0].shape[1])

        # a switchable BN holds one nn.BatchNorm2d per switch but never calls
        # them, so the hook goes on the slimmable BN itself
        inside_bn = {id(c) for m in model.modules() if isinstance(m, SlimBatchNormBase)
                     for c in m.modules() if c is not m}
        leaves = [m for m in model.modules() if id(m) not in inside_bn and (
            isinstance(m, SlimBatchNormBase) or next(m.parameters(recurse=False), None) is not None)]
        handles = [m.register_forward_hook(hook) for m in leaves]
        try:
            total, by_module = self._analyse(model)
            params = 0
            with torch.no_grad():
                model(self._input(model))
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        return Cost(int(total), int(params), by_module)

    def _input(self, model: nn.Module) -> torch.Tensor:
        param = next(model.parameters())
        return torch.zeros(1, 3, self.image_size, self.image_size,
                           dtype=param.dtype, device=param.device)

    def _analyse(self, model: nn.Module) -> tuple[int, dict[str, int]]:
        with _quiet():
            from fvcore.nn import FlopCountAnalysis
            from fvcore.nn.jit_handles import elementwise_flop_counter
        analysis = FlopCountAnalysis(model, self._input(model))
        # fvcore 0.1.5's set_op_handle(name, None) leaves the default
        # handler in place, so BN is silenced with a handler counting 0.
        analysis.set_op_handle("aten::batch_norm", _count_nothing)
        # strided average pools (ShuffleNet's shortcut): one per input
        # element, as fvcore counts the global one and the authors both
        analysis.set_op_handle("aten::avg_pool2d", elementwise_flop_counter(1, 0))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        # fvcore traces with torch.jit, which logs and warns on slicing.
        with _quiet():
            return analysis.total(), dict(analysis.by_module())


@torch.no_grad()
def _scaling_channels(net: nn.Module, example: torch.Tensor) -> list[tuple[str, int, int]]:
    """Each leaf of a dense net with the two channel counts its multiply-adds
    are proportional to (a conv: inputs per group and outputs; a pool: the
    channels it reads), seen in one forward of ``example``."""
    seen: dict[str, tuple[int, int]] = {}
    handles = [m.register_forward_hook(
        lambda m, i, o, key=key: seen.__setitem__(key, (i[0].shape[1], o.shape[1])))
        for key, m in net.named_modules() if not list(m.children())]
    try:
        net(example)
    finally:
        for h in handles:
            h.remove()
    out = []
    for key, m in net.named_modules():
        if key not in seen:
            continue
        if isinstance(m, nn.Conv2d):
            out.append((key, m.in_channels // m.groups, m.out_channels))
        elif isinstance(m, nn.Linear):
            out.append((key, m.in_features, m.out_features))
        else:
            out.append((key, seen[key][0], 1))
    return out


def _count_nothing(_inputs, _outputs) -> Counter:
    return Counter()


@contextlib.contextmanager
def _quiet():
    import warnings
    logger = logging.getLogger("fvcore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def count_flops(model: nn.Module, width: WidthLike = 1.0,
                image_size: int | None = None) -> Cost:
    """MFLOPs (``.mflops``) and active parameters (``.params``) of ``model``
    at ``width`` for a square ``image_size`` input."""
    return FlopCounter(model, image_size).at(width)


def flops_table(model: nn.Module, widths: Sequence[WidthLike],
                image_size: int | None = None) -> pd.DataFrame:
    """One row per width: ``width`` (config string), ``mflops``, ``params_m``
    and the per-layer ``channels``. Counted by scaling one fvcore trace
    (the same counts as one trace per width, tested, in one trace's time)."""
    counter = FlopCounter(model, image_size, scaled=True)
    rows = []
    for width in widths:
        config = WidthConfig.coerce(width)
        config.channels(model.slots)  # validates stages before counting
        cost = counter.at(config)
        model.set_width(config)
        channels = "/".join(map(str, model.active_channels()))
        rows.append({"width": str(config), "mflops": round(cost.mflops, 3),
                     "params_m": round(cost.params_m, 4), "image_size": counter.image_size,
                     "channels": channels})
    model.set_width(1.0)
    return pd.DataFrame(rows, columns=["width", "mflops", "params_m", "image_size", "channels"])
