"""The training step of each kind of model, written once.

:func:`step_losses` yields the loss of every width of one step in order:
the sandwich rule with inplace distillation for US-Nets, every switch for
S-Nets, the full width for an individual net. One process runs each loss's
backward as it comes (:func:`local_step`, so only one width's activations
are alive at a time); under torchrun :class:`SandwichLoss` stacks them into
one forward for ``DistributedDataParallel`` (:func:`distributed_step`).
"""
from __future__ import annotations

import random
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.layers import SlimBatchNormBase, SlimConv2d
from ..nn.width import WidthConfig
from ..runtime.distributed import all_sum


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets (inplace distillation)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class SandwichSampler:
    """Widths of one US training step: largest, smallest and ``n - 2``
    random ones (one ratio per layer when ``nonuniform``)."""

    def __init__(self, width_range: Sequence[float], num_sample: int, num_layers: int,
                 nonuniform: bool, rng: random.Random) -> None:
        self.lo, self.hi = width_range
        self.num_sample, self.num_layers = num_sample, num_layers
        self.nonuniform, self.rng = nonuniform, rng

    def draw(self) -> list[WidthConfig]:
        widths = [WidthConfig(self.hi), WidthConfig(self.lo)]
        for _ in range(self.num_sample - 2):
            if self.nonuniform:
                ratios = [self.rng.uniform(self.lo, self.hi) for _ in range(self.num_layers)]
                widths.append(WidthConfig.per_layer(ratios))
            else:
                widths.append(WidthConfig(self.rng.uniform(self.lo, self.hi)))
        return widths


def distill_loss(logits: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor,
                 criterion: Callable, weight: float) -> torch.Tensor:
    """Loss of a non-largest sandwich width: ``weight`` x inplace distillation
    from the largest width's soft targets + ``(1 - weight)`` x the label loss
    (each term alone at weight 1 or 0)."""
    if weight >= 1:
        return soft_cross_entropy(logits, soft)
    if weight <= 0:
        return criterion(logits, labels)
    return weight * soft_cross_entropy(logits, soft) + (1 - weight) * criterion(logits, labels)


def step_losses(model: nn.Module, kind: str, images: torch.Tensor, labels: torch.Tensor,
                criterion: Callable, widths: Sequence[WidthConfig] | None = None,
                distill: bool | float = True,
                switches: Sequence[float] = ()) -> Iterator[torch.Tensor]:
    """The loss of each width of one step, in order (see the module docstring).

    US: the largest width learns from the labels, every other width from its
    detached softmax with weight ``distill`` (True = 1: pure inplace
    distillation; False = 0: labels only; see :func:`distill_loss`)."""
    if kind == "us":
        model.set_width(widths[0])
        logits = model(images)
        yield criterion(logits, labels)
        soft = F.softmax(logits.detach(), dim=1)
        for width in widths[1:]:
            model.set_width(width)
            yield distill_loss(model(images), labels, soft, criterion, float(distill))
    elif kind == "slimmable":
        for width in sorted(switches, reverse=True):
            model.set_width(width)
            yield criterion(model(images), labels)
    else:
        model.set_width(1.0)
        yield criterion(model(images), labels)


def local_step(model: nn.Module, kind: str, images: torch.Tensor, labels: torch.Tensor,
               criterion: Callable, widths: Sequence[WidthConfig] | None = None,
               distill: bool | float = True, switches: Sequence[float] = ()) -> list[float]:
    """One process's step: each width's backward as soon as its loss is
    known (gradients accumulate); returns the losses."""
    losses = []
    for loss in step_losses(model, kind, images, labels, criterion, widths, distill, switches):
        loss.backward()
        losses.append(loss.item())
    return losses


class SandwichLoss(nn.Module):
    """Every width of one step in a single forward, returning the stacked
    losses of :func:`step_losses`. Under torchrun the model is trained
    through ``DistributedDataParallel(SandwichLoss(...))``: one forward and
    one backward per step, so DDP averages the summed gradient once."""

    def __init__(self, model: nn.Module, kind: str, criterion: Callable, distill: bool | float,
                 switches: Sequence[float]) -> None:
        super().__init__()
        self.model, self.kind, self.criterion = model, kind, criterion
        self.distill, self.switches = distill, tuple(switches)

    def forward(self, images: torch.Tensor, labels: torch.Tensor,
                widths: Sequence[WidthConfig] | None = None) -> torch.Tensor:
        return torch.stack(list(step_losses(self.model, self.kind, images, labels,
                                            self.criterion, widths, self.distill,
                                            self.switches)))


def distributed_step(ddp: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     widths, ctx) -> tuple[list[float], int]:
    """One step of one process under torchrun. Each loss is the mean over
    this process's share of the global batch; scaling it by
    ``world * local / global`` makes DDP's average of gradients the gradient
    of the mean over the global batch, even when the shares differ by one."""
    local = labels.numel()
    total = int(all_sum(torch.tensor([float(local)], device=images.device)).item())
    losses = ddp(images, labels, widths)
    (losses.sum() * (ctx.world * local / total)).backward()
    return [float(v) for v in losses.detach().cpu()], total


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on depthwise convs, BN parameters and biases."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            exempt = (isinstance(module, (SlimBatchNormBase, nn.BatchNorm2d))
                      or (isinstance(module, SlimConv2d) and module.depthwise)
                      or name == "bias")
            (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
