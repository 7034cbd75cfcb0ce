"""ShuffleNet (v1, 3 groups) as the authors' S-ShuffleNet: a slimmable
network with switches 0.5, 1.0 and 2.0, built at its largest switch.

Module names follow the authors' release: the stem is three parallel heads
``head_{0,1,2}`` (3x3 stride-2 conv to a third of the stem's channels, BN,
ReLU, 3x3 stride-2 max-pool; their outputs are concatenated), then
``features.{0..15}`` are the blocks and ``classifier.0`` the linear layer.
A block has three grouped-1x1 branches ``a_{0,1,2}`` (conv, BN, ReLU), a
channel shuffle with the 3x3 depthwise conv and its BN in ``b.{0,1,2}``, and
three grouped-1x1 branches ``c_{0,1,2}`` (conv, BN). The first block of each
stage has stride 2 and appends a 3x3 stride-2 average pool of its input
(``concat_branch``) to its ReLU'd output; the others add their input, then
apply the ReLU. The grouped convs are one conv per group (each group keeps
its own first channels), and each group of the first block reads the whole
stem output, as in the authors' model.

Widths (the authors' rule, at width ``w``): the stem keeps ``int(24 w)``
channels, a block of ``C`` output channels ``int(C w)``, with ``int(C w) // 4``
mid channels. Slots: the stem's heads, each block's ``a`` branches, and each
stage's first ``c`` branches; the later blocks' ``c`` branches return the
stage's channel count (their output is added to their input), so they
follow the stage's first block instead of holding a slot of their own.

Stems: ``imagenet`` (224x224, 7x7 before the pool) and ``cifar`` (stride-1
heads without the max-pool: 32x32, 4x4 before the pool).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..errors import UsageError
from ..nn.layers import (Branches, ChannelShuffle, Residual, SlimConv2d, SlimLinear,
                         USBatchNorm2d)
from ..nn.width import format_ratio
from .base import SlimmableNet, check_repeats, init_weights, leaf_modules, mark_kind
from .registry import register_model

GROUPS = 3
COMPRESS = 4  # mid channels = output channels // 4 (the authors' width_compress)
STEM_CHANNELS = 24
STAGE_OUTPUTS = (240, 480, 960)
DEPTH = (4, 8, 4)
STEMS = {"imagenet": 224, "cifar": 32}
DEFAULT_SWITCHES = (0.5, 1.0, 2.0)


def _branches(count: int, inp: int, out: int, relu: bool) -> list[nn.Sequential]:
    """``count`` parallel 1x1 conv + BN (+ ReLU) chains."""
    return [nn.Sequential(SlimConv2d(inp, out, 1, 1, 0, bias=False), USBatchNorm2d(out),
                          *([nn.ReLU(inplace=True)] if relu else []))
            for _ in range(count)]


class ShuffleBlock(nn.Module):
    """One ShuffleNet unit (see the module docstring); ``inp``/``out`` are
    the channel counts at the width the network is built at."""

    def __init__(self, inp: int, out: int, stride: int, split: bool) -> None:
        super().__init__()
        self.concat = not (stride == 1 and inp == out)
        self.split = split
        body_out = out - inp if self.concat else out
        mid = out // COMPRESS
        if self.concat:
            self.concat_branch = nn.AvgPool2d(3, 2, 1)
        for i, branch in enumerate(_branches(GROUPS, inp // GROUPS if split else inp,
                                             mid // GROUPS, relu=True)):
            setattr(self, f"a_{i}", branch)
        self.b = nn.Sequential(ChannelShuffle(GROUPS),
                               SlimConv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
                               USBatchNorm2d(mid))
        for i, branch in enumerate(_branches(GROUPS, mid // GROUPS, body_out // GROUPS,
                                             relu=False)):
            setattr(self, f"c_{i}", branch)
        self.post_relu = nn.ReLU(inplace=True)

    @property
    def a(self) -> list[nn.Sequential]:
        return [getattr(self, f"a_{i}") for i in range(GROUPS)]

    @property
    def c(self) -> list[nn.Sequential]:
        return [getattr(self, f"c_{i}") for i in range(GROUPS)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x.chunk(GROUPS, 1) if self.split else [x] * GROUPS
        y = self.b(torch.cat([a(p) for a, p in zip(self.a, parts)], 1))
        y = torch.cat([c(p) for c, p in zip(self.c, y.chunk(GROUPS, 1))], 1)
        if self.concat:
            return torch.cat([self.post_relu(y), self.concat_branch(x)], 1)
        return self.post_relu(y + x)

    def sequence(self, name: str) -> list[tuple[str, nn.Module | Residual]]:
        """This block's entries of the layer sequence."""
        body: list = [
            (f"{name}.a", Branches([leaf_modules(a, f"{name}.a_{i}") for i, a in enumerate(self.a)],
                                   split=self.split)),
            *leaf_modules(self.b, f"{name}.b"),
            (f"{name}.c", Branches([leaf_modules(c, f"{name}.c_{i}") for i, c in enumerate(self.c)],
                                   split=True)),
        ]
        relu = (f"{name}.post_relu", self.post_relu)
        if self.concat:
            return [(name, Residual([*body, relu], [(f"{name}.concat_branch", self.concat_branch)],
                                    merge="concat"))]
        return [(name, Residual(body)), relu]


class ShuffleNet(SlimmableNet):
    """ShuffleNet with 3 groups whose every layer can run on its first
    channels (per group), built at ``full_width``."""

    channel_rounding = "int"

    def __init__(self, num_classes: int = 1000, stem: str = "imagenet", full_width: float = 1.0,
                 repeats: Sequence[int] | None = None) -> None:
        super().__init__()
        if stem not in STEMS:
            raise UsageError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
        if num_classes < 1:
            raise UsageError(f"num_classes must be >= 1, got {num_classes}")
        self.full_width = float(full_width)
        self.default_image_size = STEMS[stem]
        stride = 2 if stem == "imagenet" else 1
        stem_channels = int(STEM_CHANNELS * self.full_width)
        for i in range(GROUPS):
            layers = [SlimConv2d(3, stem_channels // GROUPS, 3, stride, 1, bias=False),
                      USBatchNorm2d(stem_channels // GROUPS), nn.ReLU(inplace=True)]
            if stem == "imagenet":
                layers.append(nn.MaxPool2d(3, 2))
            setattr(self, f"head_{i}", nn.Sequential(*layers))
        self.add_slot("head", [h[0] for h in self.heads], stage=0)
        blocks: list[ShuffleBlock] = []
        self._stage_blocks: list[list[ShuffleBlock]] = []
        inp = stem_channels
        for stage, (channels, count) in enumerate(zip(STAGE_OUTPUTS, check_repeats(repeats, DEPTH)),
                                                  start=1):
            out = int(channels * self.full_width)
            stage_blocks = [ShuffleBlock(inp if i == 0 else out, out, 2 if i == 0 else 1,
                                         split=not (stage == 1 and i == 0))
                            for i in range(count)]
            for i, block in enumerate(stage_blocks):
                index = len(blocks) + i
                self.add_slot(f"features.{index}.a", [a[0] for a in block.a], stage)
                if i == 0:
                    self.add_slot(f"features.{index}.c", [c[0] for c in block.c], stage)
            blocks.extend(stage_blocks)
            self._stage_blocks.append(stage_blocks)
            inp = out
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(SlimLinear(inp, num_classes))
        self.num_classes = num_classes
        init_weights(self)

    @property
    def heads(self) -> list[nn.Sequential]:
        return [getattr(self, f"head_{i}") for i in range(GROUPS)]

    def set_channels(self, channels: Sequence[int], key: str | None = None) -> None:
        super().set_channels(channels, key)
        # a stage's later blocks add their output to their input: they keep
        # the channels the stage's first block gives (its branches' plus the
        # pooled input it appends)
        width = GROUPS * self.heads[0][0].out_active
        for stage_blocks in self._stage_blocks:
            width += GROUPS * stage_blocks[0].c[0][0].out_active
            for block in stage_blocks[1:]:
                for c in block.c:
                    c[0].out_active = width // GROUPS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([head(x) for head in self.heads], 1)
        return super().forward(x)

    def layer_sequence(self) -> list[tuple[str, nn.Module | Residual | Branches]]:
        sequence: list = [("head", Branches([leaf_modules(h, f"head_{i}")
                                             for i, h in enumerate(self.heads)], split=False))]
        for i, block in enumerate(self.features):
            sequence.extend(block.sequence(f"features.{i}"))
        return [*sequence, *self.head_sequence()]


def check_shufflenet_switches(switches: Sequence[float]) -> tuple[float, ...]:
    """Sorted positive switches; the network is built at the largest."""
    values = tuple(sorted(float(s) for s in switches))
    if not values or any(not s > 0 for s in values):
        raise UsageError(f"switches must be positive widths, got {list(switches)}")
    if len(set(values)) != len(values):
        raise UsageError(f"switches repeat a width: {list(switches)}")
    return values


@register_model
def s_shufflenet(num_classes: int = 1000, stem: str = "imagenet",
                 switches: Sequence[float] = DEFAULT_SWITCHES,
                 repeats: Sequence[int] | None = None) -> ShuffleNet:
    """The authors' S-ShuffleNet (3 groups): one private BN per switch,
    built at the largest switch (2.0), channels ``int(C * w)``."""
    values = check_shufflenet_switches(switches)
    model = ShuffleNet(num_classes, stem, full_width=values[-1], repeats=repeats)
    model.make_bns_switchable([format_ratio(v) for v in values])
    mark_kind(model, "slimmable", switches=values)
    model.set_width(values[-1])
    return model
