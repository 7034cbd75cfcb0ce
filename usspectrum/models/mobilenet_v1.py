"""MobileNet v1 in its three guises: universally slimmable (US), 4-switch
slimmable (S) and plain (individually trained, still sliceable).

Module names follow the US-Nets release (``features.{0..13}``,
``features.{i}.body.{0,1,3,4}``, ``classifier.0``) so its checkpoints map
onto this model key for key.

Stems: ``imagenet`` (224x224 input, stem stride 2, last stage 7x7) and
``cifar`` (32x32 input, stem stride 1, all other strides as on ImageNet, so
the last stage runs at 2x2).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..errors import UsageError
from ..nn.layers import ReLU6, SlimConv2d, SlimLinear, SwitchableBatchNorm2d, USBatchNorm2d
from .base import (SlimmableNet, check_repeats, check_switches,
                   init_weights, leaf_modules, mark_kind)
from .registry import register_model

STEM_CHANNELS = 32
# (channels, repeats, first stride) of the five stages
STAGES = ((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2))
STEMS = {"imagenet": (2, 224), "cifar": (1, 32)}
DEFAULT_SWITCHES = (0.25, 0.5, 0.75, 1.0)

BatchNormFactory = Callable[[int], nn.Module]


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise + BN + ReLU6, then 1x1 pointwise + BN + ReLU6."""

    def __init__(self, inp: int, out: int, stride: int, norm: BatchNormFactory,
                 average_output: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(
            SlimConv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
            norm(inp),
            ReLU6(inplace=True),
            SlimConv2d(inp, out, 1, 1, 0, bias=False, average_output=average_output),
            norm(out),
            ReLU6(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MobileNetV1(SlimmableNet):
    """MobileNet v1 whose every layer can run on its first channels."""

    def __init__(self, num_classes: int = 1000, stem: str = "imagenet",
                 norm: BatchNormFactory = USBatchNorm2d,
                 average_output: bool = False, repeats: Sequence[int] | None = None,
                 channels: Sequence[int] | None = None) -> None:
        """``channels``: full output channels of the stem and of each block
        (AutoSlim's base network), instead of MobileNet v1 1.0x's."""
        super().__init__()
        stages = _stages(repeats)
        plan = list(channels) if channels is not None else (
            [STEM_CHANNELS] + [out for out, count, _ in stages for _ in range(count)])
        if len(plan) != 1 + sum(count for _, count, _ in stages):
            raise UsageError(f"MobileNet v1 needs {1 + sum(c for _, c, _ in stages)} channel "
                             f"counts (stem and blocks), got {len(plan)}")
        if stem not in STEMS:
            raise UsageError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
        if num_classes < 1:
            raise UsageError(f"num_classes must be >= 1, got {num_classes}")
        stem_stride, self.default_image_size = STEMS[stem]
        stem_conv = SlimConv2d(3, plan[0], 3, stem_stride, 1, bias=False)
        layers: list[nn.Module] = [
            nn.Sequential(stem_conv, norm(plan[0]), ReLU6(inplace=True))]
        self.add_slot("features.0", stem_conv, stage=0)
        inp = plan[0]
        for stage, (_, count, first_stride) in enumerate(stages, start=1):
            for i in range(count):
                out = plan[len(layers)]
                block = DepthwiseSeparable(inp, out, first_stride if i == 0 else 1,
                                           norm, average_output)
                self.add_slot(f"features.{len(layers)}", block.body[3], stage)
                layers.append(block)
                inp = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(SlimLinear(inp, num_classes))
        self.num_classes = num_classes
        init_weights(self)

    def layer_sequence(self) -> list[tuple[str, nn.Module]]:
        return [*leaf_modules(self.features, "features"), *self.head_sequence()]

def _stages(repeats: Sequence[int] | None) -> tuple[tuple[int, int, int], ...]:
    counts = check_repeats(repeats, [n for _, n, _ in STAGES])
    return tuple((c, n, s) for (c, _, s), n in zip(STAGES, counts))


@register_model
def us_mobilenet_v1(num_classes: int = 1000, stem: str = "imagenet",
                    width_range: Sequence[float] = (0.25, 1.0),
                    average_output: bool = False,
                    repeats: Sequence[int] | None = None) -> MobileNetV1:
    """US-MobileNet v1: shared BN affine, runs at any width in ``width_range``."""
    model = MobileNetV1(num_classes, stem, USBatchNorm2d, average_output, repeats)
    return mark_kind(model, "us", width_range=width_range)


@register_model
def s_mobilenet_v1(num_classes: int = 1000, stem: str = "imagenet",
                   switches: Sequence[float] = DEFAULT_SWITCHES,
                   repeats: Sequence[int] | None = None) -> MobileNetV1:
    """Slimmable MobileNet v1 with switchable BN, one private BN per switch."""
    values = check_switches(switches)
    model = MobileNetV1(num_classes, stem, lambda c: SwitchableBatchNorm2d(c, values),
                        repeats=repeats)
    return mark_kind(model, "slimmable", switches=values)


@register_model
def mobilenet_v1(num_classes: int = 1000, stem: str = "imagenet",
                 repeats: Sequence[int] | None = None) -> MobileNetV1:
    """Plain MobileNet v1 1.0x (the individually trained baseline); narrower
    widths slice its channels, which is how Figure 2 evaluates it."""
    model = MobileNetV1(num_classes, stem, USBatchNorm2d, repeats=repeats)
    return mark_kind(model, "individual")
