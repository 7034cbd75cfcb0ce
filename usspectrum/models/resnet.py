"""ResNet-50 (bottleneck blocks) in its guises: 4-switch slimmable
(``s_resnet50``, the authors' S-ResNet-50), universally slimmable
(``us_resnet50``) and plain (``resnet50``, what a torchvision state dict
loads into). AutoSlim-ResNet-50 builds on the same class
(:mod:`usspectrum.models.autoslim`).

Module names follow the authors' release: ``features.0`` is the stem
(conv, BN, ReLU[, max-pool]), ``features.{1..16}`` the blocks with
``body.{0,1,3,4,6,7}`` (1x1 to mid, BN, 3x3 with the block's stride, BN,
1x1 to out, BN) and ``shortcut.{0,1}`` (1x1 conv + BN) where the shape
changes, then ``classifier.0``.

Widths (the authors' rule): at ratio ``r`` a layer of ``C`` channels keeps
``int(C * r)``; a block's mid channels are its output's // 4 (the same as
``int(C / 4 * r)``).

Slots, in order of first use: the stem; then per stage the first block's
two mid convs, the stage's output (the first block's last conv and
projection shortcut and every later block's last conv: a residual chain,
one ratio), then the later blocks' mid convs.

Stems: ``imagenet`` (7x7 stride 2 + 3x3 max-pool, 224x224, last stage 7x7)
and ``cifar`` (3x3 stride 1, no max-pool, 32x32, last stage 4x4).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..errors import UsageError
from ..nn.layers import Residual, SlimConv2d, SlimLinear, SwitchableBatchNorm2d, USBatchNorm2d
from .base import (SlimmableNet, check_repeats, check_switches, init_weights, leaf_modules,
                   mark_kind)
from .registry import register_model

STEM_CHANNELS = 64
STAGE_OUTPUTS = (256, 512, 1024, 2048)
DEPTH = (3, 4, 6, 3)
STEMS = {"imagenet": 224, "cifar": 32}
DEFAULT_SWITCHES = (0.25, 0.5, 0.75, 1.0)
DEFAULT_WIDTH_RANGE = (0.25, 1.0)

BatchNormFactory = Callable[[int], nn.Module]
# full channel counts: stem, then per stage (output, [(mid1, mid2) per block])
Plan = tuple[int, tuple[tuple[int, tuple[tuple[int, int], ...]], ...]]


def standard_plan(repeats: Sequence[int] | None = None) -> Plan:
    """The channel plan of ResNet-50 (mid = output // 4)."""
    counts = check_repeats(repeats, DEPTH)
    return STEM_CHANNELS, tuple((out, ((out // 4, out // 4),) * n)
                                for out, n in zip(STAGE_OUTPUTS, counts))


class Bottleneck(nn.Module):
    """1x1 + BN + ReLU, 3x3 (stride) + BN + ReLU, 1x1 + BN; plus the input
    (identity) or a 1x1 conv + BN of it (projection), then ReLU."""

    def __init__(self, inp: int, mid1: int, mid2: int, out: int, stride: int,
                 norm: BatchNormFactory, project: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(
            SlimConv2d(inp, mid1, 1, 1, 0, bias=False), norm(mid1), nn.ReLU(inplace=True),
            SlimConv2d(mid1, mid2, 3, stride, 1, bias=False), norm(mid2), nn.ReLU(inplace=True),
            SlimConv2d(mid2, out, 1, 1, 0, bias=False), norm(out))
        if project:
            self.shortcut = nn.Sequential(SlimConv2d(inp, out, 1, stride, 0, bias=False),
                                          norm(out))
        else:
            self.shortcut = None
        self.post_relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        y = y + (x if self.shortcut is None else self.shortcut(x))
        return self.post_relu(y)


class ResNet(SlimmableNet):
    """Bottleneck ResNet whose every layer can run on its first channels."""

    channel_rounding = "int"

    def __init__(self, num_classes: int = 1000, stem: str = "imagenet",
                 norm: BatchNormFactory = USBatchNorm2d, plan: Plan | None = None) -> None:
        super().__init__()
        if stem not in STEMS:
            raise UsageError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
        if num_classes < 1:
            raise UsageError(f"num_classes must be >= 1, got {num_classes}")
        stem_channels, stages = plan or standard_plan()
        self.default_image_size = STEMS[stem]
        if stem == "imagenet":
            stem_conv = SlimConv2d(3, stem_channels, 7, 2, 3, bias=False)
            head = [stem_conv, norm(stem_channels), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        else:
            stem_conv = SlimConv2d(3, stem_channels, 3, 1, 1, bias=False)
            head = [stem_conv, norm(stem_channels), nn.ReLU(inplace=True)]
        layers: list[nn.Module] = [nn.Sequential(*head)]
        self.add_slot("features.0", stem_conv, stage=0)
        inp = stem_channels
        for stage, (out, mids) in enumerate(stages, start=1):
            first = len(layers)
            blocks = [Bottleneck(inp if i == 0 else out, m1, m2, out,
                                 2 if i == 0 and stage > 1 else 1, norm, project=i == 0)
                      for i, (m1, m2) in enumerate(mids)]
            layers.extend(blocks)
            for i, block in enumerate(blocks):
                self.add_slot(f"features.{first + i}.body.0", block.body[0], stage)
                self.add_slot(f"features.{first + i}.body.3", block.body[3], stage)
                if i == 0:
                    self.add_slot(f"features.{first}-{first + len(blocks) - 1}.out",
                                  [blocks[0].shortcut[0], *(b.body[6] for b in blocks)], stage)
            inp = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(SlimLinear(inp, num_classes))
        self.num_classes = num_classes
        init_weights(self)

    def layer_sequence(self) -> list[tuple[str, nn.Module | Residual]]:
        sequence: list[tuple[str, nn.Module | Residual]] = []
        for i, layer in enumerate(self.features):
            name = f"features.{i}"
            if isinstance(layer, Bottleneck):
                shortcut = (None if layer.shortcut is None
                            else leaf_modules(layer.shortcut, f"{name}.shortcut"))
                sequence.append((name, Residual(leaf_modules(layer.body, f"{name}.body"),
                                                shortcut)))
                sequence.append((f"{name}.post_relu", layer.post_relu))
            else:
                sequence.extend(leaf_modules(layer, name))
        return [*sequence, *self.head_sequence()]

@register_model
def us_resnet50(num_classes: int = 1000, stem: str = "imagenet",
                width_range: Sequence[float] = DEFAULT_WIDTH_RANGE,
                repeats: Sequence[int] | None = None) -> ResNet:
    """US-ResNet-50: shared BN affine, runs at any width in ``width_range``."""
    model = ResNet(num_classes, stem, USBatchNorm2d, standard_plan(repeats))
    return mark_kind(model, "us", width_range=width_range)


@register_model
def s_resnet50(num_classes: int = 1000, stem: str = "imagenet",
               switches: Sequence[float] = DEFAULT_SWITCHES,
               repeats: Sequence[int] | None = None) -> ResNet:
    """The authors' S-ResNet-50: one private BN per switch, channels ``int(C * w)``."""
    values = check_switches(switches)
    model = ResNet(num_classes, stem, lambda c: SwitchableBatchNorm2d(c, values, rounding="int"),
                   standard_plan(repeats))
    return mark_kind(model, "slimmable", switches=values)


@register_model
def resnet50(num_classes: int = 1000, stem: str = "imagenet",
             repeats: Sequence[int] | None = None) -> ResNet:
    """Plain ResNet-50 (the individually trained baseline; also what a
    torchvision ``resnet50`` state dict loads into)."""
    model = ResNet(num_classes, stem, USBatchNorm2d, standard_plan(repeats))
    return mark_kind(model, "individual")
