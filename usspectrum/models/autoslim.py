"""AutoSlim networks: slimmable networks whose switches are per-layer
channel lists found by greedy slimming (Yu & Huang, "AutoSlim", 2019).

The lists are published facts, shipped as data (``usspectrum/data/autoslim.json``,
from the authors' ``apps/autoslim_*_train_val.yml``); a switch is named by
the budget in the authors' comments (``"150M"``) and set like any width:
``set_width(model, "150M")``, ``--widths 150M,325M``. Each list is in the
order the authors' model consumes it (``pop_channels``) and ends with the
classifier's outputs. The base network holds, per layer, the largest count
of any switch, as the release's tensors do; every BN is switchable, one
private BN per switch.
"""
from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Sequence

from ..nn.layers import SlimConv2d, USBatchNorm2d
from .base import SlimmableNet
from .mobilenet_v1 import MobileNetV1
from .mobilenet_v2 import STAGES as V2_STAGES, MobileNetV2, V2Plan, _us_norm
from .registry import register_model
from .resnet import DEPTH, Plan, ResNet


@functools.lru_cache(maxsize=None)
def autoslim_switches(family: str) -> dict[str, tuple[int, ...]]:
    """The published channel lists of ``family`` (``mobilenet_v1``,
    ``mobilenet_v2``, ``mnasnet``, ``resnet50``), by switch name, classifier
    dropped."""
    text = resources.files("usspectrum").joinpath("data/autoslim.json").read_text()
    return {name: tuple(values[:-1]) for name, values in json.loads(text)[family].items()}


def _largest(switches: dict[str, tuple[int, ...]]) -> list[int]:
    return [max(values) for values in zip(*switches.values())]


def _finish(model: SlimmableNet, switches: dict[str, tuple[int, ...]],
            convs: Sequence[SlimConv2d]) -> SlimmableNet:
    model.use_named_switches(switches, convs)
    return model


@register_model
def autoslim_mobilenet_v1(num_classes: int = 1000, stem: str = "imagenet") -> MobileNetV1:
    """AutoSlim-MobileNet v1: switches ``150M``, ``325M``, ``572M``."""
    switches = autoslim_switches("mobilenet_v1")
    model = MobileNetV1(num_classes, stem, USBatchNorm2d, channels=_largest(switches))
    convs = [model.features[0][0], *(block.body[3] for block in model.features[1:])]
    return _finish(model, switches, convs)


def _v2_plan(largest: Sequence[int], stage_table=V2_STAGES) -> V2Plan:
    """A MobileNet v2 (or MNasNet) plan from a list in the authors' order:
    stem, the first block's output (it has no expansion), (hidden, output)
    per later block, the last conv."""
    stem, first_out, *pairs, tail = largest
    flat = [(stem, first_out)] + list(zip(pairs[::2], pairs[1::2]))
    stages, i = [], 0
    for _, _, n, _ in stage_table:
        block_pairs = flat[i:i + n]
        out = max(o for _, o in block_pairs)  # a residual chain: one output count
        stages.append(tuple((h, out) for h, _ in block_pairs))
        i += n
    return stem, tuple(stages), tail


def _inverted_residual_convs(model: MobileNetV2) -> list[SlimConv2d]:
    """The convs a list sets, in its order: stem, first block's projection,
    (expansion, projection) per later block, the last conv."""
    blocks = list(model.features[1:-1])
    convs = [model.features[0][0], blocks[0].project_conv]
    for block in blocks[1:]:
        convs.extend([block.expand_conv, block.project_conv])
    convs.append(model.features[-1][0])
    return convs


@register_model
def autoslim_mobilenet_v2(num_classes: int = 1000, stem: str = "imagenet") -> MobileNetV2:
    """AutoSlim-MobileNet v2: switches ``207M``, ``305M``, ``505M``."""
    switches = autoslim_switches("mobilenet_v2")
    model = MobileNetV2(num_classes, stem, _us_norm, plan=_v2_plan(_largest(switches)))
    return _finish(model, switches, _inverted_residual_convs(model))


# MNasNet's 17 blocks as the authors' block_setting lists them, grouped into
# residual chains: (t, c, n, s) and the depthwise kernel of each group
MNASNET_STAGES = ((1, 16, 1, 1), (3, 24, 3, 2), (3, 40, 3, 2), (6, 80, 3, 2),
                  (6, 96, 2, 1), (6, 192, 4, 2), (6, 320, 1, 1))
MNASNET_KERNELS = (3, 3, 5, 5, 3, 5, 3)


@register_model
def autoslim_mnasnet(num_classes: int = 1000, stem: str = "imagenet") -> MobileNetV2:
    """AutoSlim-MNasNet: switches ``217M``, ``315M``, ``532M``: inverted
    residual blocks with 3x3 and 5x5 depthwise convs, a 16-channel stem."""
    switches = autoslim_switches("mnasnet")
    model = MobileNetV2(num_classes, stem, _us_norm,
                        plan=_v2_plan(_largest(switches), MNASNET_STAGES),
                        stages=MNASNET_STAGES, kernels=MNASNET_KERNELS)
    return _finish(model, switches, _inverted_residual_convs(model))


def _resnet_plan(largest: Sequence[int]) -> Plan:
    """A ResNet-50 plan from a list in the authors' order: stem, then per
    stage the output, then (mid1, mid2, output) per block."""
    values = iter(largest)
    stem = next(values)
    stages = []
    for count in DEPTH:
        out = next(values)
        mids = []
        for _ in range(count):
            mids.append((next(values), next(values)))
            out = max(out, next(values))
        stages.append((out, tuple(mids)))
    return stem, tuple(stages)


@register_model
def autoslim_resnet50(num_classes: int = 1000, stem: str = "imagenet") -> ResNet:
    """AutoSlim-ResNet-50: switches ``570M``, ``1000M``, ``2006M``, ``3005M``."""
    switches = autoslim_switches("resnet50")
    model = ResNet(num_classes, stem, USBatchNorm2d, _resnet_plan(_largest(switches)))
    convs = [model.features[0][0]]
    blocks = iter(model.features[1:])
    for count in DEPTH:
        stage = [next(blocks) for _ in range(count)]
        convs.append(stage[0].body[6])
        for block in stage:
            convs.extend([block.body[0], block.body[3], block.body[6]])
    return _finish(model, switches, convs)
