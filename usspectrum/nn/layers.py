"""Slimmable layers: each runs on the first channels of its full-size weights.

Input channel counts are read from the incoming tensor, so a depthwise conv
follows its input automatically; only output counts are set from outside
(by :meth:`usspectrum.models.base.SlimmableNet.set_width`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kernels
from .kernels import batch_norm_train, depthwise_conv, is_channels_last, pointwise_conv, relu6_
from .width import LayerSlot, format_ratio


class SlimConv2d(nn.Conv2d):
    """Conv2d that uses ``weight[:out_active, :in]``.

    A depthwise conv (``groups == in_channels == out_channels``) keeps as many
    channels as it receives. ``average_output`` multiplies the output by
    ``in_channels / active input channels`` (never for depthwise convs, whose
    output channels each see one input channel)."""

    def __init__(self, *args, average_output: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.depthwise = self.groups > 1 and self.groups == self.in_channels == self.out_channels
        if self.groups > 1 and not self.depthwise:
            raise ValueError("SlimConv2d supports plain and depthwise convs only")
        self.average_output = average_output and not self.depthwise
        self.out_active: int | None = None

    def active_shape(self, in_active: int) -> tuple[int, int, int]:
        """(out channels, in channels per group, groups) for an input of ``in_active``."""
        if self.depthwise:
            return in_active, 1, in_active
        out = self.out_channels if self.out_active is None else self.out_active
        return out, in_active, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, in_per_group, groups = self.active_shape(x.shape[1])
        weight = self.weight[:out, :in_per_group]
        bias = None if self.bias is None else self.bias[:out]
        if self._fast_training_path(x):
            if self.depthwise:
                y = depthwise_conv(x, weight, self.stride[0], self.padding[0])
            else:
                y = pointwise_conv(x, weight)
        else:
            y = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)
        if self.average_output and x.shape[1] != self.in_channels:
            y = y * (self.in_channels / x.shape[1])
        return y

    def _fast_training_path(self, x: torch.Tensor) -> bool:
        """Whether this training forward can use :mod:`usspectrum.nn.kernels`
        (same results, faster on the CPU; see ``benchmarks/bench_train.py``)."""
        if not (kernels.enabled() and self.training and torch.is_grad_enabled()
                and x.device.type == "cpu"
                and self.bias is None and is_channels_last(x)
                and self.dilation == (1, 1) and not torch.jit.is_tracing()):
            return False
        if self.depthwise:
            return self.stride[0] == self.stride[1] and self.padding[0] == self.padding[1]
        return (self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)
                and max(x.shape[2:]) <= kernels.POINTWISE_MAX_SIDE)


class ReLU6(nn.ReLU6):
    """``nn.ReLU6`` whose in-place training forward skips the copy autograd
    makes of the activation (:func:`usspectrum.nn.kernels.relu6_`); elsewhere
    (eval, tracing, export) it is ``nn.ReLU6``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.inplace and kernels.enabled() and self.training and torch.is_grad_enabled()
                and x.requires_grad and not torch.jit.is_tracing()):
            return relu6_(x)
        return super().forward(x)


class SlimLinear(nn.Linear):
    """Linear layer that reads as many input features as it receives."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.out_active: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.out_features if self.out_active is None else self.out_active
        bias = None if self.bias is None else self.bias[:out]
        return F.linear(x, self.weight[:out, : x.shape[1]], bias)


class _Calibration:
    """Cumulative (equal-weight) average of batch statistics, as
    ``nn.BatchNorm2d(momentum=None)`` keeps it."""

    def __init__(self) -> None:
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None
        self.batches = 0


class SlimBatchNormBase(nn.Module):
    """BatchNorm over the first ``C`` channels with a store of calibrated
    statistics per width config.

    ``calibrated[key] = (mean, var)`` holds post-training statistics for the
    width config whose string form is ``key``; in eval mode they are used
    whenever the model runs at that config (``active_key``). Subclasses say
    where the affine parameters and the training-time running statistics
    come from."""

    def __init__(self, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.calibrated: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.active_key: str | None = None
        self._calibration: dict[str, _Calibration] | None = None
        # set by training under torchrun: batch statistics over all processes
        self.sync_group = None

    # subclasses --------------------------------------------------------
    def affine(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def running(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # calibration --------------------------------------------------------
    def start_calibration(self, keys: Iterable[str]) -> None:
        """Begin accumulating statistics for each width key in ``keys``; the
        forward pass feeds the accumulator of ``active_key``."""
        self._calibration = {k: _Calibration() for k in keys}

    def finish_calibration(self) -> None:
        """Store the accumulated statistics in :attr:`calibrated`."""
        calibrations, self._calibration = self._calibration or {}, None
        for key, cal in calibrations.items():
            if cal.mean is None:
                raise RuntimeError(f"calibration of width {key} saw no batch")
            self.calibrated[key] = (cal.mean, cal.var)

    def abort_calibration(self) -> None:
        self._calibration = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        weight, bias = self.affine(channels)
        if self._calibration is not None:
            cal = self._calibration[self.active_key]
            if cal.mean is None:
                cal.mean = torch.zeros(channels, device=x.device, dtype=x.dtype)
                cal.var = torch.ones(channels, device=x.device, dtype=x.dtype)
            cal.batches += 1
            return F.batch_norm(x, cal.mean, cal.var, weight, bias, True,
                                1.0 / cal.batches, self.eps)
        if self.training:
            mean, var = self.running(channels)
            if self.sync_group is not None:
                return _sync_batch_norm(x, mean, var, weight, bias, self.momentum, self.eps,
                                        self.sync_group)
            if kernels.enabled() and x.device.type == "cpu" and torch.is_grad_enabled():
                return batch_norm_train(x, mean, var, weight, bias, self.momentum, self.eps)
            return F.batch_norm(x, mean, var, weight, bias, True, self.momentum, self.eps)
        mean, var = self.eval_stats(channels, x.device)
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)

    def eval_stats(self, channels: int, device: torch.device | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (mean, var) used in eval mode at ``channels``: the calibrated
        statistics of ``active_key`` when stored, else the running ones."""
        stats = self.calibrated.get(self.active_key) if self.active_key else None
        if stats is not None and stats[0].shape[0] == channels:
            mean, var = stats
        else:
            mean, var = self.running(channels)
        return (mean, var) if device is None else (mean.to(device), var.to(device))


def _sync_batch_norm(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                     weight: torch.Tensor, bias: torch.Tensor, momentum: float, eps: float,
                     group) -> torch.Tensor:
    """Training-mode BN whose batch statistics cover the batches of every
    process (the global batch), differentiably: the same result as one
    process running the whole batch. Two all-reduces: count and sum, then
    the sum of squared deviations (stabler than sum of squares)."""
    from torch.distributed.nn.functional import all_reduce

    dims = (0, 2, 3)
    local = torch.cat([x.new_tensor([x.numel() / x.shape[1]]), x.sum(dims)])
    total = all_reduce(local, group=group)
    count, mean = total[0], total[1:] / total[0]
    centered = x - mean.view(1, -1, 1, 1)
    var = all_reduce((centered * centered).sum(dims), group=group) / count
    with torch.no_grad():
        unbiased = var * (count / (count - 1).clamp(min=1))
        running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
        running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
    scale = weight * torch.rsqrt(var + eps)
    return centered * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def set_sync_group(model: nn.Module, group) -> None:
    """Make every slimmable BN of ``model`` compute training statistics over
    the processes of ``group`` (``None``: this process only)."""
    for _, bn in slim_batchnorms(model):
        bn.sync_group = group


class USBatchNorm2d(SlimBatchNormBase):
    """Universally slimmable BN: one shared scale/bias of full size.

    The full-size running statistics are those tracked during training (the
    useful ones for a plain network at full width); US-Nets rely on the
    calibrated store instead."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(eps, momentum)
        self.num_features = num_features
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def affine(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight[:channels], self.bias[:channels]

    def running(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.running_mean[:channels], self.running_var[:channels]

    def extra_repr(self) -> str:
        return f"{self.num_features}, shared affine, {len(self.calibrated)} calibrated widths"


class SwitchableBatchNorm2d(SlimBatchNormBase):
    """Private BN per switch (Slimmable Networks).

    At a switch (the model's width key is the switch's: ``"0.5"``,
    ``"150M"``) that switch's BN is used, as the authors' model indexes its
    BNs by the active switch: two switches may keep the same channel count
    in a layer (S-MobileNet v2's 16-channel stage keeps 8 at 0.35 and 0.5).
    At any other width the BN of the smallest switch with at least the
    active channels is used, sliced; its statistics are then only a
    fallback for calibrated ones.

    ``switches`` are widths, whose channel counts follow ``rounding`` and
    ``multiple`` (see :class:`~usspectrum.nn.width.LayerSlot`), or, with
    ``channels``, names of switches given with their channel counts."""

    def __init__(self, num_features: int, switches: Sequence[float | str],
                 eps: float = 1e-5, momentum: float = 0.1, multiple: int = 1,
                 rounding: str = "make_divisible",
                 channels: Sequence[int] | None = None) -> None:
        super().__init__(eps, momentum)
        self.num_features = num_features
        if channels is None:
            self.switches = tuple(sorted(float(s) for s in switches))
            slot = LayerSlot("", num_features, 0, multiple, rounding)
            self.switch_channels = [slot.active(s) for s in self.switches]
            self.switch_keys = [format_ratio(s) for s in self.switches]
        else:
            self.switches = tuple(switches)
            self.switch_channels = [int(c) for c in channels]
            self.switch_keys = [str(s) for s in switches]
        self.bn = nn.ModuleList(nn.BatchNorm2d(c, eps=eps, momentum=momentum)
                                for c in self.switch_channels)

    def switch_index(self, channels: int) -> int:
        """The BN used at ``channels``: the active switch's, else the
        smallest switch's that has as many."""
        if self.active_key in self.switch_keys:
            index = self.switch_keys.index(self.active_key)
            if self.switch_channels[index] >= channels:
                return index
        for i, c in enumerate(self.switch_channels):
            if c >= channels:
                return i
        return len(self.switch_channels) - 1

    def affine(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.bn[self.switch_index(channels)]
        return bn.weight[:channels], bn.bias[:channels]

    def running(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.bn[self.switch_index(channels)]
        return bn.running_mean[:channels], bn.running_var[:channels]

    def extra_repr(self) -> str:
        return f"{self.num_features}, switches={list(self.switches)}"


def slim_batchnorms(model: nn.Module) -> Iterable[tuple[str, SlimBatchNormBase]]:
    """All slimmable BN layers of ``model`` with their qualified names."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, SlimBatchNormBase))


@dataclass
class Residual:
    """An entry of :meth:`SlimmableNet.layer_sequence`: ``chain(x)`` merged
    with ``shortcut(x)``, both layer sequences. The shortcut a block declares
    is the identity (``shortcut=None``: ``chain`` keeps the channel count), a
    projection (a 1x1 conv + BN chain, where the shape changes) or none at
    all (then the block is no ``Residual``, only its layers). ``merge`` is
    ``add`` or ``concat`` (ShuffleNet's strided blocks append an average
    pool of their input to the body's channels)."""

    layers: list[tuple[str, nn.Module]]
    shortcut: list[tuple[str, nn.Module]] | None = None
    merge: str = "add"

    def __post_init__(self) -> None:
        if self.merge not in ("add", "concat"):
            raise ValueError(f"merge must be add or concat, got {self.merge!r}")
        if self.merge == "concat" and self.shortcut is None:
            raise ValueError("a concatenating block needs its shortcut's layers")

    @property
    def kind(self) -> str:
        if self.merge == "concat":
            return "concat"
        return "identity" if self.shortcut is None else "projection"


@dataclass
class Branches:
    """An entry of :meth:`SlimmableNet.layer_sequence`: parallel layer
    sequences whose outputs are concatenated along channels. With ``split``
    branch ``i`` gets the ``i``-th of ``len(branches)`` equal channel chunks
    of the input (a grouped 1x1 conv written as one conv per group, as the
    authors' ShuffleNet does, so that each group keeps its own first
    channels); without, every branch gets the whole input."""

    branches: list[list[tuple[str, nn.Module]]]
    split: bool = True


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: ``groups`` blocks of channels are
    interleaved (channel ``k`` of group ``g`` goes to ``k * groups + g``)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
