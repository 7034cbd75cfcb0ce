"""Top-1 / top-5 of one model at many widths, in one pass over the data."""
from __future__ import annotations

from dataclasses import dataclass
import time
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from ..nn.width import WidthConfig, WidthLike
from .prefix_tree import PrefixTree


@dataclass
class Accuracy:
    """Correct predictions counted over ``images``."""

    top1_correct: int = 0
    top5_correct: int = 0
    images: int = 0

    @property
    def top1(self) -> float:
        return 100.0 * self.top1_correct / max(1, self.images)

    @property
    def top5(self) -> float:
        return 100.0 * self.top5_correct / max(1, self.images)

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(labels.view(-1, 1))
        self.top1_correct += int(hits[:, 0].sum())
        self.top5_correct += int(hits.any(dim=1).sum())
        self.images += labels.numel()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, widths: Sequence[WidthLike],
             device: str | torch.device | None = None, dense: bool = True,
             shares: WidthLike | None = None) -> dict[str, Accuracy]:
    """Accuracy at each width; every batch is loaded once and run at all widths.

    By default each width runs as a BN-folded dense copy
    (:func:`usspectrum.nn.folding.to_dense`); ``dense=False`` slices the model's
    weights on every forward instead (slower, same predictions up to float
    rounding). ``shares``: one of ``widths`` whose layers the others share
    up to where they differ, run once per batch (see :func:`evaluate_nets`)."""
    device = device or next(model.parameters()).device
    configs = [WidthConfig.coerce(w) for w in widths]
    if dense:
        from ..nn.folding import to_dense

        nets = {str(c): to_dense(model, c, fuse_activations=True) for c in configs}
        base = None if shares is None else str(WidthConfig.coerce(shares))
        return evaluate_nets(nets, batches, device, base=base)
    previous, was_training = model.width_config, model.training
    model.eval()
    try:
        return evaluate_nets({str(c): SlicedAtWidth(model, c) for c in configs}, batches, device)
    finally:
        model.set_width(previous)
        model.train(was_training)


class SlicedAtWidth:
    """The slimmable model at one width, callable like a dense copy: the
    reference path, which slices the full weights on every forward."""

    def __init__(self, model: nn.Module, config: WidthConfig) -> None:
        self.model, self.config = model, config

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.model.set_width(self.config)
        return self.model(x)


@torch.no_grad()
def evaluate_nets(nets: Mapping[str, nn.Module], batches: Iterable,
                  device: str | torch.device = "cpu", results: dict[str, Accuracy] | None = None,
                  seconds: dict[str, float] | None = None,
                  base: str | None = None) -> dict[str, Accuracy]:
    """Accuracy of each of ``nets`` (eval mode) over ``batches``; counts add
    to ``results`` and compute time to ``seconds`` when given.

    With ``base`` (a key of ``nets``, all dense copies of one model) the
    nets run as a :class:`~usspectrum.spectrum.prefix_tree.PrefixTree`: the
    layers a net shares with ``nets[base]`` in front of its first different
    one run once per batch (the time goes to ``base``)."""
    results = results if results is not None else {}
    for key in nets:
        results.setdefault(key, Accuracy())
    tree = None if base is None else PrefixTree(
        base, nets[base], {k: n for k, n in nets.items() if k != base})
    for images, labels in batches:
        images, labels = images.to(device), labels.to(device)
        if tree is not None:
            start = time.perf_counter()
            for key, logits in tree(images).items():
                results[key].add(logits, labels)
            if seconds is not None:
                seconds[base] = seconds.get(base, 0.0) + time.perf_counter() - start
            continue
        for key, net in nets.items():
            start = time.perf_counter()
            logits = net(images)
            if seconds is not None:
                seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
            results[key].add(logits, labels)
    return results
