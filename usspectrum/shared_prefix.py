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

from typing import Iterable, Mapping

import torch
import torch.nn as nn

from .calibration import (DenseCalibrator, calibration_net, shift_by_probe,
                          store_statistics)
from .dense import to_dense
from .evaluate import Accuracy
from .width import WidthConfig


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


class SharedPrefixCalibrator:
    """BN calibration of ``base`` and ``configs`` (each differing from
    ``base`` in some slots) with shared prefixes; the statistics equal
    :class:`usspectrum.calibration.DenseCalibrator`'s up to float rounding
    and are stored in the model's calibrated store on leaving the block."""

    probe_images = DenseCalibrator.probe_images

    def __init__(self, model: nn.Module, base: WidthConfig,
                 configs: Iterable[WidthConfig]) -> None:
        self.model, self.base = model, base
        self.configs = [c for c in configs if str(c) != str(base)]
        self.tree: PrefixTree | None = None
        self.images = 0

    def __enter__(self) -> "SharedPrefixCalibrator":
        self.nets = {str(c): calibration_net(self.model, c)
                     for c in [self.base, *self.configs]}
        return self

    @torch.no_grad()
    def update(self, images: torch.Tensor) -> None:
        if self.tree is None:
            # each net shifts its own BN inputs first (a shared layer must not
            # be shifted twice); the shifts of shared layers are the same
            for net in self.nets.values():
                shift_by_probe(net, images[:self.probe_images])
            base = str(self.base)
            self.tree = PrefixTree(base, self.nets[base],
                                   {k: n for k, n in self.nets.items() if k != base})
        self.tree(images)
        self.images += images.shape[0]

    def __exit__(self, exc_type, exc, tb) -> None:
        nets, self.nets = self.nets, {}
        if exc_type is not None:
            return
        if not self.images:
            raise RuntimeError("calibration saw no batch")
        for key, net in nets.items():
            store_statistics(self.model, key, net)


@torch.no_grad()
def evaluate_shared(model: nn.Module, base: WidthConfig, configs: Iterable[WidthConfig],
                    batches: Iterable) -> dict[str, Accuracy]:
    """Accuracy of ``base`` and every one of ``configs`` (BN-folded dense
    copies with the statistics stored for them) over ``batches`` of
    ``(images, labels)``, each batch running the shared prefixes once."""
    by_key = {str(c): c for c in [base, *configs]}
    keys = list(by_key)
    nets = {k: to_dense(model, c, fuse_activations=True) for k, c in by_key.items()}
    tree = PrefixTree(keys[0], nets[keys[0]], {k: nets[k] for k in keys[1:]})
    results = {k: Accuracy() for k in keys}
    for images, labels in batches:
        for key, logits in tree(images).items():
            results[key].add(logits, labels)
    return results
