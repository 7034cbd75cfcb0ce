"""Networks that share a prefix with one base network, run as a tree.

A greedy-search candidate slims one group of layers of the current config;
every layer in front of that group's first conv computes exactly what the
current config computes, in BN calibration (same batches, same batch
statistics) and in evaluation (same statistics, same weights). So each
batch runs through the current config once, and each candidate branches
off where it first differs: at layer granularity a candidate repeats on
average about half of the network instead of all of it.

The branch point is the first top-level layer of the dense copies whose
parameter shapes differ: a candidate changes channel counts only, and a
layer with the same shapes and the same inputs as the base's holds the same
(sliced) weights. From there on the candidate runs its own layers.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn



def branch_point(base: nn.Sequential, net: nn.Sequential) -> int:
    """Index of the first top-level layer of ``net`` whose parameter shapes
    differ from ``base``'s (``len(base)`` when none does)."""
    for i, (a, b) in enumerate(zip(base, net)):
        if type(a) is not type(b) or ([p.shape for p in a.parameters()]
                                      != [p.shape for p in b.parameters()]):
            return i
    return min(len(base), len(net))


class PrefixTree:
    """``base`` and ``branches`` (dense networks of one model), where each
    branch reuses the base's layers in front of its branch point: calling it
    runs every network on one batch and returns ``{key: output}``.

    The branches' leading layers are replaced by the base's modules, so what
    those layers accumulate (calibration statistics) is the base's, counted
    once per batch."""

    def __init__(self, base_key: str, base: nn.Sequential,
                 branches: Mapping[str, nn.Sequential]) -> None:
        self.base_key, self.base = base_key, base
        self.layers = list(base)
        self.branches: dict[int, list[tuple[str, list[nn.Module]]]] = {}
        for key, net in branches.items():
            point = branch_point(base, net)
            for i in range(point):
                net[i] = base[i]  # one module: the branch's prefix statistics are the base's
            self.branches.setdefault(point, []).append((key, list(net)[point:]))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images
        if getattr(self.base, "channels_last", False):
            x = x.contiguous(memory_format=torch.channels_last)
        outputs = {}
        for i in range(len(self.layers) + 1):
            for key, rest in self.branches.get(i, ()):
                y = x
                for layer in rest:
                    y = layer(y)
                outputs[key] = y
            if i < len(self.layers):
                x = self.layers[i](x)
        outputs[self.base_key] = x
        return outputs
