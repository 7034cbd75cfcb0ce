"""Calibrated BN statistics stored per width in a model's slimmable BN
layers: which widths have them, and reading / writing them as plain tensors
(what checkpoints save)."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from .layers import slim_batchnorms
from .width import WidthConfig, WidthLike

BNStats = dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]


def is_calibrated(model: nn.Module, width: WidthLike) -> bool:
    """Whether every BN layer holds stored statistics for ``width``."""
    key = str(WidthConfig.coerce(width))
    bns = [bn for _, bn in slim_batchnorms(model)]
    return bool(bns) and all(key in bn.calibrated for bn in bns)


def calibrated_widths(model: nn.Module) -> list[str]:
    """Width keys for which every BN layer holds statistics."""
    sets = [set(bn.calibrated) for _, bn in slim_batchnorms(model)]
    return sorted(set.intersection(*sets), key=_sort_key) if sets else []


def _sort_key(key: str):
    try:
        return (0, float(key), key)
    except ValueError:
        return (1, 0.0, key)


def get_bn_stats(model: nn.Module, widths: Iterable[str] | None = None) -> BNStats:
    """``{width_key: {bn_name: (mean, var)}}`` of the stored statistics."""
    keys = calibrated_widths(model) if widths is None else list(widths)
    return {k: {name: tuple(t.detach().cpu() for t in bn.calibrated[k])
                for name, bn in slim_batchnorms(model)} for k in keys}


def set_bn_stats(model: nn.Module, stats: BNStats) -> None:
    """Load statistics written by :func:`get_bn_stats`."""
    bns = dict(slim_batchnorms(model))
    for key, layers in stats.items():
        missing = set(bns) - set(layers)
        if missing:
            raise ValueError(f"BN statistics of width {key} lack layers {sorted(missing)[:3]}")
        for name, (mean, var) in layers.items():
            bns[name].calibrated[key] = (mean, var)


def clear_bn_stats(model: nn.Module) -> None:
    for _, bn in slim_batchnorms(model):
        bn.calibrated.clear()
