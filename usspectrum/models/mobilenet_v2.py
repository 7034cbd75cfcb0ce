"""MobileNet v2 in its three guises: universally slimmable (US), 4-switch
slimmable (S) and plain (individually trained, still sliceable).

Module names follow the US-Nets release (``features.0`` stem,
``features.{1..17}.body.{k}`` blocks, ``features.18`` the 1280-channel conv,
``classifier.0``) so its checkpoints map onto this model key for key;
:func:`usspectrum.io.checkpoint` renames torchvision's keys onto the same model.

Widths (the authors' rule): at ratio ``r`` a block's input and output keep
``make_divisible(C * r)`` channels and its expansion ``t *
make_divisible(C_in * r)``; the 1280-channel conv's output and the
classifier are never slimmed, and its BN is one plain BN for every width.

Slots (what a per-layer config sets, in this order of first use): the stem;
then, stage by stage, each block's expansion and the stage's output. The
blocks of a stage are a residual chain (every block after the first adds its
input to its output), so one ratio sets the output of all of them: a
nonuniform config can never give the two operands of an add different
channel counts. ``layers:`` configs therefore have 24 ratios at full depth:
stem, 7 stage outputs, 16 expansions (the first block has none, t = 1).

Stems: ``imagenet`` (224x224, stem stride 2, last stage 7x7) and ``cifar``
(32x32, stem stride 1, every other stride as on ImageNet, so the last stage
runs at 2x2, as for MobileNet v1's CIFAR stem).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..errors import UsageError
from ..nn.layers import ReLU6, SlimConv2d, SlimLinear, SwitchableBatchNorm2d, USBatchNorm2d
from .base import (Residual, SlimmableNet, check_repeats, check_switches,
                   init_weights, leaf_modules, mark_kind)
from .registry import register_model

STEM_CHANNELS = 32
LAST_CHANNELS = 1280
# (expansion t, channels c, blocks n, first stride s) of the seven stages
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
          (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
Stages = Sequence[tuple[int, int, int, int]]
STEMS = {"imagenet": (2, 224), "cifar": (1, 32)}
DEFAULT_SWITCHES = (0.35, 0.5, 0.75, 1.0)
DEFAULT_WIDTH_RANGE = (0.35, 1.0)

# (channels, multiple) -> BN; ``multiple`` as in LayerSlot, for switchable BNs
BatchNormFactory = Callable[[int, int], nn.Module]


def _us_norm(channels: int, multiple: int = 1) -> nn.Module:
    return USBatchNorm2d(channels)


class InvertedResidual(nn.Module):
    """[1x1 expand + BN + ReLU6,] 3x3 depthwise + BN + ReLU6, 1x1 project +
    BN; plus the input when ``residual`` (stride 1, same channels)."""

    def __init__(self, inp: int, out: int, stride: int, expand: int,
                 norm: BatchNormFactory, average_output: bool, hidden: int | None = None,
                 kernel: int = 3) -> None:
        """``hidden``: the expansion's channels when not ``inp * expand``
        (AutoSlim); no expansion conv when it equals ``inp``. ``kernel``:
        the depthwise conv's size (MNasNet's blocks use 3 and 5)."""
        super().__init__()
        hidden = inp * expand if hidden is None else hidden
        self.residual = stride == 1 and inp == out
        layers: list[nn.Module] = []
        if hidden != inp:
            layers += [SlimConv2d(inp, hidden, 1, 1, 0, bias=False, average_output=average_output),
                       norm(hidden, expand), ReLU6(inplace=True)]
        layers += [SlimConv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden,
                              bias=False),
                   norm(hidden, expand), ReLU6(inplace=True),
                   SlimConv2d(hidden, out, 1, 1, 0, bias=False, average_output=average_output),
                   norm(out, 1)]
        self.body = nn.Sequential(*layers)
        self.expands = hidden != inp

    # properties, not attributes: a second reference would register the
    # conv under a second name and add keys to the state dict
    @property
    def expand_conv(self) -> SlimConv2d | None:
        return self.body[0] if self.expands else None

    @property
    def project_conv(self) -> SlimConv2d:
        return self.body[-2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


# full channels: stem, per stage [(hidden, out) per block], the last conv
# (None: 1280, not slimmed)
V2Plan = tuple[int, tuple[tuple[tuple[int, int], ...], ...], "int | None"]


def standard_plan(counts: Sequence[int]) -> V2Plan:
    """MobileNet v2 1.0x: hidden = t * the block's input channels."""
    stages, inp = [], STEM_CHANNELS
    for (t, c, _, _), n in zip(STAGES, counts):
        stages.append(tuple((t * (inp if i == 0 else c), c) for i in range(n)))
        inp = c
    return STEM_CHANNELS, tuple(stages), None


class MobileNetV2(SlimmableNet):
    """MobileNet v2 whose every layer can run on its first channels."""

    def __init__(self, num_classes: int = 1000, stem: str = "imagenet",
                 norm: BatchNormFactory = _us_norm, average_output: bool = False,
                 repeats: Sequence[int] | None = None, plan: V2Plan | None = None,
                 stages: Stages = STAGES, kernels: Sequence[int] | None = None) -> None:
        """``plan``: full channels of AutoSlim's base network instead of
        MobileNet v2 1.0x's (then the last conv is slimmable too).
        ``stages``/``kernels``: another inverted-residual network's stage
        table and depthwise kernel per stage (AutoSlim-MNasNet's)."""
        super().__init__()
        kernels = tuple(kernels) if kernels is not None else (3,) * len(stages)
        counts = check_repeats(repeats, [n for _, _, n, _ in stages])
        if plan is not None and [len(b) for b in plan[1]] != list(counts):
            raise UsageError("a MobileNet v2 plan needs one (hidden, out) pair per block")
        plan = plan or standard_plan(counts)
        if stem not in STEMS:
            raise UsageError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
        if num_classes < 1:
            raise UsageError(f"num_classes must be >= 1, got {num_classes}")
        stem_stride, self.default_image_size = STEMS[stem]
        stem_channels, stage_plans, tail = plan
        stem_conv = SlimConv2d(3, stem_channels, 3, stem_stride, 1, bias=False)
        layers: list[nn.Module] = [
            nn.Sequential(stem_conv, norm(stem_channels, 1), ReLU6(inplace=True))]
        self.add_slot("features.0", stem_conv, stage=0)
        inp = stem_channels
        for stage, ((t, _, n, s), pairs, k) in enumerate(zip(stages, stage_plans, kernels),
                                                         start=1):
            first, c = len(layers), pairs[0][1]
            blocks = [InvertedResidual(inp if i == 0 else c, c, s if i == 0 else 1, t, norm,
                                       average_output, hidden, k)
                      for i, (hidden, _) in enumerate(pairs)]
            t = t if plan[2] is None else 1  # AutoSlim's expansions are free channel counts
            layers.extend(blocks)
            inp = c
            expand_slots = [(f"features.{first + i}.body.0", b.expand_conv)
                            for i, b in enumerate(blocks) if b.expand_conv is not None]
            # order of first use: the first block's expansion, then the stage's
            # output (all its blocks' projections), then the other expansions
            for name, conv in expand_slots[:1]:
                self.add_slot(name, conv, stage, multiple=t)
            self.add_slot(f"features.{first}-{first + n - 1}.project",
                          [b.project_conv for b in blocks], stage)
            for name, conv in expand_slots[1:]:
                self.add_slot(name, conv, stage, multiple=t)
        # the 1280-channel conv reads the slimmed features; its output is not
        # slimmed, except in AutoSlim's base network
        last = LAST_CHANNELS if tail is None else tail
        last_conv = SlimConv2d(inp, last, 1, 1, 0, bias=False, average_output=average_output)
        layers.append(nn.Sequential(
            last_conv, USBatchNorm2d(last) if tail is None else norm(last, 1), ReLU6(inplace=True)))
        if tail is not None:
            self.add_slot(f"features.{len(layers) - 1}", last_conv, stage=len(stages))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(SlimLinear(last, num_classes))
        self.num_classes = num_classes
        init_weights(self)

    def layer_sequence(self) -> list[tuple[str, nn.Module | Residual]]:
        sequence: list[tuple[str, nn.Module | Residual]] = []
        for i, layer in enumerate(self.features):
            name = f"features.{i}"
            if isinstance(layer, InvertedResidual):
                body = leaf_modules(layer.body, f"{name}.body")
                sequence.extend([(name, Residual(body))] if layer.residual else body)
            else:
                sequence.extend(leaf_modules(layer, name))
        return [*sequence, *self.head_sequence()]

@register_model
def us_mobilenet_v2(num_classes: int = 1000, stem: str = "imagenet",
                    width_range: Sequence[float] = DEFAULT_WIDTH_RANGE,
                    average_output: bool = False,
                    repeats: Sequence[int] | None = None) -> MobileNetV2:
    """US-MobileNet v2: shared BN affine, runs at any width in ``width_range``."""
    model = MobileNetV2(num_classes, stem, _us_norm, average_output, repeats)
    return mark_kind(model, "us", width_range=width_range)


@register_model
def s_mobilenet_v2(num_classes: int = 1000, stem: str = "imagenet",
                   switches: Sequence[float] = DEFAULT_SWITCHES,
                   repeats: Sequence[int] | None = None) -> MobileNetV2:
    """Slimmable MobileNet v2 with switchable BN, one private BN per switch
    (the 1280-channel conv's BN stays one plain BN, as in the release)."""
    values = check_switches(switches)
    model = MobileNetV2(num_classes, stem,
                        lambda c, m: SwitchableBatchNorm2d(c, values, multiple=m), repeats=repeats)
    return mark_kind(model, "slimmable", switches=values)


@register_model
def mobilenet_v2(num_classes: int = 1000, stem: str = "imagenet",
                 repeats: Sequence[int] | None = None) -> MobileNetV2:
    """Plain MobileNet v2 1.0x (the individually trained baseline; also what a
    torchvision ``mobilenet_v2`` state dict loads into)."""
    model = MobileNetV2(num_classes, stem, _us_norm, repeats=repeats)
    return mark_kind(model, "individual")
