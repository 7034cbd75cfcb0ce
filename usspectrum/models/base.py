"""What every slimmable network shares: its slots and how a width is applied."""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from ..errors import UsageError
from ..nn.layers import (Branches, Residual, SlimBatchNormBase, SlimConv2d,  # noqa: F401
                         SwitchableBatchNorm2d, slim_batchnorms)
from ..nn.width import LayerSlot, WidthConfig, WidthLike

KINDS = ("us", "slimmable", "individual")


class SlimmableNet(nn.Module):
    """Base class of the model families: the contract a family implements.

    A family (one file in :mod:`usspectrum.models`, builders registered with
    :func:`~usspectrum.models.registry.register_model`) provides:

    - **slots**: in ``__init__``, :meth:`add_slot` for each slimmable layer,
      the conv whose *output* channels the width controls, with its stage
      (0 for the stem; 1.. for the stages ``@sK`` and ``slim-stage`` name).
      Everything downstream (depthwise convs, BN, the classifier) follows its
      input. Convs whose outputs are added together (a residual chain) share
      one slot, so no width config can give the two operands different
      channel counts.
    - **rounding**: ``channel_rounding``, the rule that turns
      ``channels * ratio`` into a count (:data:`~usspectrum.nn.width.CHANNEL_ROUNDING`:
      ``make_divisible`` for MobileNets, ``int`` for the authors' ResNet
      and ShuffleNet), or, for AutoSlim, a fixed channel list per named
      switch (:meth:`use_named_switches`).
    - **layer sequence**: :meth:`layer_sequence`, the leaf modules in the
      order ``forward`` applies them; each residual block declares its
      shortcut as a :class:`Residual` entry, identity (``shortcut=None``),
      projection (the shortcut's conv + BN sequence) or concatenated
      (``merge="concat"``); parallel branches whose outputs are
      concatenated (ShuffleNet's per-group convs) are a :class:`Branches`
      entry; a block without a shortcut is just its layers. Folding a width
      into a plain network, BN calibration, shared prefixes and FLOPs
      counting all follow it.
    - ``default_image_size`` and the slimmable layers of
      :mod:`usspectrum.nn.layers` (``SlimConv2d``, a slimmable BN, ``SlimLinear``).

    ``kind`` is ``us``, ``slimmable`` (with ``switches``) or ``individual``;
    ``width_range`` is the range of widths the network was trained for;
    ``full_width`` the width its layers are built at (1.0, or S-ShuffleNet's
    2.0: widths run up to it)."""

    kind: str = "us"
    switches: tuple[float, ...] | None = None
    width_range: tuple[float, float] = (0.25, 1.0)
    default_image_size: int = 224
    channel_rounding: str = "make_divisible"
    full_width: float = 1.0  # the width the layers are built at (S-ShuffleNet: 2.0)

    def __init__(self) -> None:
        super().__init__()
        self.slots: list[LayerSlot] = []
        self._slot_convs: list[tuple[SlimConv2d, ...]] = []
        self.width_config = WidthConfig(1.0)
        self.meta: dict = {}  # class names, preprocessing, training record (see checkpoint.py)

    def add_slot(self, name: str, convs: SlimConv2d | Sequence[SlimConv2d], stage: int,
                 multiple: int = 1) -> None:
        """Let one width ratio set the output channels of ``convs`` (one conv,
        or several tied together); ``multiple``: see :class:`LayerSlot`."""
        convs = (convs,) if isinstance(convs, SlimConv2d) else tuple(convs)
        if len({c.out_channels for c in convs}) != 1:
            raise ValueError(f"slot {name} ties convs of different widths")
        self.slots.append(LayerSlot(name, convs[0].out_channels, stage, multiple,
                                    self.channel_rounding, full_width=self.full_width))
        self._slot_convs.append(convs)

    @property
    def num_stages(self) -> int:
        return max(s.stage for s in self.slots)

    def set_width(self, width: WidthLike) -> WidthConfig:
        """Run at ``width`` (float, string form or :class:`WidthConfig`)."""
        config = WidthConfig.coerce(width)
        self.set_channels(config.channels(self.slots), key=str(config))
        self.width_config = config
        return config

    def set_channels(self, channels: Sequence[int], key: str | None = None) -> None:
        """Set every slot's active channel count directly (``key`` names the
        config for the calibrated-BN store)."""
        for convs, c in zip(self._slot_convs, channels, strict=True):
            for conv in convs:
                conv.out_active = int(c)
        for _, bn in slim_batchnorms(self):
            bn.active_key = key

    def layer_sequence(self) -> list[tuple[str, nn.Module | Residual]]:
        """The leaf modules in the order ``forward`` applies them, with
        :class:`Residual` entries for skip connections (used to build dense
        sub-networks)."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its layer chain")

    def slot_of(self, conv: SlimConv2d) -> int:
        """Index of the slot that sets ``conv``'s output channels."""
        for i, convs in enumerate(self._slot_convs):
            if any(c is conv for c in convs):
                return i
        raise ValueError("conv is in no slot")

    def use_named_switches(self, switches: Mapping[str, Sequence[int]],
                           convs: Sequence[SlimConv2d]) -> None:
        """Make this a slimmable net whose switches are per-layer channel
        lists (AutoSlim): ``switches[name][i]`` is the output channel count
        of ``convs[i]`` at switch ``name``. Every BN becomes a switchable BN
        with one private BN per switch, sized by what it sees there."""
        names = tuple(switches)
        counts: dict[str, list[int | None]] = {n: [None] * len(self.slots) for n in names}
        for name, values in switches.items():
            if len(values) != len(convs):
                raise ValueError(f"switch {name} lists {len(values)} channel counts for "
                                 f"{len(convs)} layers")
            for conv, value in zip(convs, values):
                slot = self.slot_of(conv)
                if counts[name][slot] not in (None, value):
                    raise ValueError(f"switch {name} gives tied layers {counts[name][slot]} "
                                     f"and {value} channels")
                counts[name][slot] = int(value)
        self.slots = [dataclasses.replace(slot, named=tuple((n, counts[n][i]) for n in names))
                      for i, slot in enumerate(self.slots)]
        self.make_bns_switchable(names)
        self.kind, self.switches, self.width_range = "slimmable", names, (1.0, 1.0)
        self.set_width(1.0)

    def make_bns_switchable(self, switches: Sequence[WidthLike]) -> None:
        """Replace every slimmable BN with a switchable BN holding one private
        BN per switch, sized by the channels it receives there (found with a
        tiny forward at each switch)."""
        keys = [str(WidthConfig.coerce(s)) for s in switches]
        seen = {key: self._bn_inputs(key) for key in keys}
        for bn_name, bn in list(slim_batchnorms(self)):
            parent, _, leaf = bn_name.rpartition(".")
            switchable = SwitchableBatchNorm2d(bn.num_features, keys,
                                               channels=[seen[k][bn_name] for k in keys])
            setattr(self.get_submodule(parent) if parent else self, leaf, switchable)

    @torch.no_grad()
    def _bn_inputs(self, switch: str) -> dict[str, int]:
        """Channels each slimmable BN receives at ``switch`` (a tiny forward)."""
        seen: dict[str, int] = {}
        handles = [bn.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, i[0].shape[1]))
                   for name, bn in slim_batchnorms(self)]
        was_training = self.training
        try:
            self.eval()
            self.set_width(switch)
            self(torch.zeros(1, 3, 32, 32))
        finally:
            for h in handles:
                h.remove()
            self.train(was_training)
        return seen

    # Families lay out ``features`` (stem and blocks), ``pool`` and
    # ``classifier``; forward and the head of the layer sequence follow it.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    def head_sequence(self) -> list[tuple[str, nn.Module]]:
        """The layer sequence after ``features``: pool, flatten, classifier."""
        return [("pool", self.pool), ("flatten", nn.Flatten(1)),
                *leaf_modules(self.classifier, "classifier")]

    def active_channels(self) -> list[int]:
        return [c.out_channels if c.out_active is None else c.out_active
                for c, *_ in self._slot_convs]


def has_named_switches(model: nn.Module) -> bool:
    """Whether ``model``'s switches are named channel lists (AutoSlim)."""
    switches = getattr(model, "switches", None)
    return bool(switches) and isinstance(switches[0], str)


def leaf_modules(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """``module``'s leaves in registration order (a slimmable BN counts as
    one leaf), named by their qualified names."""
    children = list(module.named_children())
    if not children or isinstance(module, SlimBatchNormBase):
        return [(prefix, module)]
    return [leaf for n, m in children for leaf in leaf_modules(m, f"{prefix}.{n}")]


def init_weights(model: nn.Module) -> None:
    """He-normal convs (fan-out), small normal linear weights, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def check_width_range(width_range: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in width_range)
    if not (0 < lo <= 1 and 0 < hi <= 1):
        raise UsageError(f"width range must lie in (0, 1], got {lo} {hi}")
    if lo > hi:
        raise UsageError(f"width range {lo} {hi} is inverted; give the smaller width first")
    return lo, hi


def check_switches(switches: Sequence[float]) -> tuple[float, ...]:
    values = tuple(sorted(float(s) for s in switches))
    if not values or any(not 0 < s <= 1 for s in values):
        raise UsageError(f"switches must be widths in (0, 1], got {list(switches)}")
    if len(set(values)) != len(values):
        raise UsageError(f"switches repeat a width: {list(switches)}")
    return values


def check_repeats(repeats: Sequence[int] | None, default: Sequence[int]) -> tuple[int, ...]:
    """Blocks per stage: ``default`` (the paper's) or fewer, for a shallower,
    faster-training variant."""
    if repeats is None:
        return tuple(default)
    values = tuple(int(r) for r in repeats)
    if len(values) != len(default) or any(r < 1 for r in values):
        raise UsageError(f"repeats needs {len(default)} block counts >= 1 (one per stage), "
                         f"got {list(values)}")
    return values


def mark_kind(model: SlimmableNet, kind: str, *, width_range: Sequence[float] | None = None,
              switches: tuple[float, ...] | None = None) -> SlimmableNet:
    """Record what ``model`` was built as: a US-Net over ``width_range``, a
    slimmable net with (checked) ``switches``, or an individual net at 1.0."""
    model.kind = kind
    if kind == "us":
        model.width_range = check_width_range(width_range)
    elif kind == "slimmable":
        model.switches = switches
        model.width_range = (switches[0], switches[-1])
    else:
        model.width_range = (1.0, 1.0)
    return model
