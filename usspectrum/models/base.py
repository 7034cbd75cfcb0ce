"""What every slimmable network shares: its slots and how a width is applied."""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from ..layers import SlimConv2d, slim_batchnorms
from ..width import LayerSlot, WidthConfig, WidthLike

KINDS = ("us", "slimmable", "individual")


class SlimmableNet(nn.Module):
    """Base class of the model families.

    A subclass registers each slimmable layer with :meth:`add_slot`: the conv
    whose *output* channels the width controls, with its stage. Everything
    downstream (depthwise convs, BN, the classifier) follows its input.

    ``kind`` is ``us``, ``slimmable`` (with ``switches``) or ``individual``;
    ``width_range`` is the range of widths the network was trained for."""

    kind: str = "us"
    switches: tuple[float, ...] | None = None
    width_range: tuple[float, float] = (0.25, 1.0)
    default_image_size: int = 224

    def __init__(self) -> None:
        super().__init__()
        self.slots: list[LayerSlot] = []
        self._slot_convs: list[SlimConv2d] = []
        self.width_config = WidthConfig(1.0)
        self.meta: dict = {}  # class names, preprocessing, training record (see checkpoint.py)

    def add_slot(self, name: str, conv: SlimConv2d, stage: int) -> None:
        self.slots.append(LayerSlot(name, conv.out_channels, stage))
        self._slot_convs.append(conv)

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
        for conv, c in zip(self._slot_convs, channels, strict=True):
            conv.out_active = int(c)
        for _, bn in slim_batchnorms(self):
            bn.active_key = key

    def layer_sequence(self) -> list[tuple[str, nn.Module]]:
        """The leaf modules in the order ``forward`` applies them, for families
        whose forward is a plain chain (used to build dense sub-networks)."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its layer chain")

    def active_channels(self) -> list[int]:
        return [c.out_channels if c.out_active is None else c.out_active
                for c in self._slot_convs]
