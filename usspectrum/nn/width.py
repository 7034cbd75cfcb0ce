"""Width configurations: which channels each layer keeps.

A :class:`WidthConfig` is one of

* a uniform width ``w`` (``"0.75"``; above 1.0 for a network built wider
  than its nominal width, as S-ShuffleNet's ``"2.0"``);
* a uniform width plus extra ratios on whole stages (``"0.75@s5x0.6"``,
  several modifiers chain: ``"0.75@s1x0.6@s5x0.8"``); a layer of stage ``k``
  then runs at ratio ``w * r_k``;
* a fully per-layer setting, one ratio per slimmable layer
  (``"layers:0.25/0.5/.../1.0"``), as drawn by nonuniform training;
* a named switch of a network whose switches are per-layer channel lists
  (AutoSlim: ``"150M"``, the budget the authors named it by).

Ratios become channel counts with :func:`make_divisible` (the rounding rule of
the US-Nets release), applied to the *product* of the ratios.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence, Union

from ..errors import UsageError

NUM_DIGITS = 6  # ratios are rounded so that 0.25 + 30 * 0.025 prints as 1.0
SWITCH_NAME = re.compile(r"^\d+(\.\d+)?[MG]$")  # "150M", "1.0G": a budget-named switch


def make_divisible(value: float, divisor: int = 8, min_value: int = 1) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least
    ``min_value``), adding one more ``divisor`` when rounding down lost more
    than 10% of ``value``."""
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


def format_ratio(value: float) -> str:
    """Shortest stable text for a ratio: ``1.0``, ``0.75``, ``0.275``."""
    text = f"{round(float(value), NUM_DIGITS):.{NUM_DIGITS}f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _check_ratio(value: float, what: str, upper: float | None = 1.0) -> float:
    """``value`` rounded to :data:`NUM_DIGITS`, if it is a number in
    ``(0, upper]`` (``upper=None``: any positive width; the model bounds it,
    see :meth:`WidthConfig.channels`)."""
    span = "(0, 1]" if upper == 1.0 else "(0, inf)"
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value)
            or math.isinf(value)):
        raise UsageError(f"{what} must be a number in {span}, got {value!r}")
    if not 0.0 < value <= (math.inf if upper is None else upper):
        raise UsageError(f"{what} must be in {span}, got {format_ratio(value)}; "
                         "use a fraction of the full width such as 0.5")
    return round(float(value), NUM_DIGITS)


def round_int(value: float) -> int:
    """``int(value)``, at least 1: the authors' ResNet and ShuffleNet rule."""
    return max(1, int(value))


# How a family turns ``channels * ratio`` into a channel count.
CHANNEL_ROUNDING = {
    "make_divisible": make_divisible,  # MobileNets: nearest multiple of 8
    "int": round_int,                  # the authors' ResNet and ShuffleNet
}


@dataclass(frozen=True)
class LayerSlot:
    """One slimmable layer (or group of layers tied to one channel count) of
    a model: its full channel count and stage.

    ``stage`` is 0 for layers outside the numbered stages (the stem).
    ``multiple``: the count is ``multiple`` times a rounded base, as in
    MobileNet v2's expansion layers, which keep ``t * make_divisible(C * r)``
    channels (rounded before the multiplication by ``t``). ``rounding``
    names the family's rule in :data:`CHANNEL_ROUNDING`. ``full_width``: the
    width at which the layer holds ``channels`` (1.0, or a network built
    wider than its nominal width, as S-ShuffleNet at 2.0); widths run up to
    it."""

    name: str
    channels: int
    stage: int
    multiple: int = 1
    rounding: str = "make_divisible"
    named: tuple[tuple[str, int], ...] = ()  # channel count at each named switch
    full_width: float = 1.0

    def active(self, ratio: float) -> int:
        """Channel count at ``ratio`` by the rounding rule."""
        base = self.channels // self.multiple
        rule = CHANNEL_ROUNDING[self.rounding]
        return self.multiple * min(base, rule(base * (ratio / self.full_width)))

    def at_switch(self, name: str) -> int:
        """Channel count at the named switch ``name``."""
        for key, count in self.named:
            if key == name:
                return count
        known = ", ".join(k for k, _ in self.named) or "none"
        raise UsageError(f"this model has no switch {name!r} (its named switches: {known}); "
                         "give one of them or a width ratio")


@dataclass(frozen=True)
class WidthConfig:
    """A width setting of a slimmable network (see the module docstring)."""

    width: float = 1.0
    stage_ratios: tuple[tuple[int, float], ...] = ()
    layer_ratios: tuple[float, ...] | None = field(default=None)
    switch: str | None = None

    def __post_init__(self) -> None:
        if self.switch is not None:
            if not SWITCH_NAME.match(str(self.switch)):
                raise UsageError(f"malformed switch name {self.switch!r}; expected a budget "
                                 "such as '150M' or '1.0G'")
            if self.layer_ratios is not None or self.stage_ratios:
                raise UsageError("a named switch cannot also have stage or layer ratios")
            object.__setattr__(self, "width", 1.0)
            return
        if self.layer_ratios is not None:
            ratios = tuple(_check_ratio(r, "layer ratio", None) for r in self.layer_ratios)
            if not ratios:
                raise UsageError("a per-layer width config needs at least one ratio")
            if self.stage_ratios:
                raise UsageError("a per-layer width config cannot also have stage ratios")
            object.__setattr__(self, "layer_ratios", ratios)
            object.__setattr__(self, "width", max(ratios))
            return
        object.__setattr__(self, "width", _check_ratio(self.width, "width", None))
        merged: dict[int, float] = {}
        for stage, ratio in self.stage_ratios:
            if not isinstance(stage, int) or stage < 1:
                raise UsageError(f"stage must be an integer >= 1, got {stage!r}")
            merged[stage] = _check_ratio(ratio, f"ratio of stage {stage}")
        object.__setattr__(self, "stage_ratios", tuple(sorted(merged.items())))

    # construction -----------------------------------------------------
    @classmethod
    def uniform(cls, width: float) -> "WidthConfig":
        return cls(width=width)

    @classmethod
    def with_stages(cls, width: float, stage_ratios: Mapping[int, float]) -> "WidthConfig":
        return cls(width=width, stage_ratios=tuple(stage_ratios.items()))

    @classmethod
    def per_layer(cls, ratios: Sequence[float]) -> "WidthConfig":
        return cls(layer_ratios=tuple(ratios))

    @classmethod
    def parse(cls, text: str) -> "WidthConfig":
        """Parse the string form written by ``str()``."""
        original = text
        text = text.strip()
        if SWITCH_NAME.match(text):
            return cls(switch=text)
        try:
            if text.startswith("layers:"):
                return cls.per_layer([float(t) for t in text[len("layers:"):].split("/")])
            head, *mods = text.split("@")
            stages: dict[int, float] = {}
            for mod in mods:
                m = re.fullmatch(r"s(\d+)x([0-9.eE+-]+)", mod.strip())
                if not m:
                    raise ValueError(mod)
                stage = int(m.group(1))
                if stage in stages:
                    raise UsageError(f"stage {stage} appears twice in width {original!r}")
                stages[stage] = float(m.group(2))
            return cls(width=float(head), stage_ratios=tuple(stages.items()))
        except UsageError:
            raise
        except ValueError:
            raise UsageError(
                f"malformed width {original!r}; expected e.g. '0.75', '0.75@s5x0.6', "
                "'layers:0.5/0.75/...' (one ratio per slimmable layer) or a named switch "
                "such as '150M'") from None

    @classmethod
    def coerce(cls, width: "WidthLike") -> "WidthConfig":
        """Accept a float, a string form or a config."""
        if isinstance(width, WidthConfig):
            return width
        if isinstance(width, str):
            return cls.parse(width)
        if isinstance(width, (int, float)) and not isinstance(width, bool):
            return cls(width=float(width))
        raise UsageError(f"cannot use {width!r} as a width; give a float, a string "
                         "such as '0.75@s5x0.6' or a WidthConfig")

    # use ----------------------------------------------------------------
    @property
    def is_uniform(self) -> bool:
        return self.layer_ratios is None and not self.stage_ratios and self.switch is None

    def ratios(self, slots: Sequence[LayerSlot]) -> list[float]:
        """The ratio each slot runs at (a named switch: its channel count
        over the slot's full count)."""
        if self.switch is not None:
            return [s.at_switch(self.switch) / s.channels for s in slots]
        if self.layer_ratios is not None:
            if len(self.layer_ratios) != len(slots):
                raise UsageError(
                    f"width config has {len(self.layer_ratios)} layer ratios but the "
                    f"model has {len(slots)} slimmable layers")
            return list(self.layer_ratios)
        num_stages = max((s.stage for s in slots), default=0)
        stage_map = dict(self.stage_ratios)
        for stage in stage_map:
            if stage > num_stages:
                raise UsageError(f"stage {stage} is out of range: this model has stages "
                                 f"1 to {num_stages}")
        return [self.width * stage_map.get(s.stage, 1.0) for s in slots]

    def channels(self, slots: Sequence[LayerSlot]) -> list[int]:
        """Active channel count of each slot, by the rounding rule; refuses
        ratios above what the model holds (its slots' ``full_width``)."""
        if self.switch is not None:
            return [s.at_switch(self.switch) for s in slots]
        ratios = self.ratios(slots)
        for slot, ratio in zip(slots, ratios):
            if ratio > slot.full_width + 1e-9:
                limit = format_ratio(slot.full_width)
                raise UsageError(f"width {self} is wider than this model, whose full width is "
                                 f"{limit}; give widths in (0, {limit}]")
        return [s.active(r) for s, r in zip(slots, ratios)]

    def __str__(self) -> str:
        if self.switch is not None:
            return self.switch
        if self.layer_ratios is not None:
            return "layers:" + "/".join(format_ratio(r) for r in self.layer_ratios)
        return format_ratio(self.width) + "".join(
            f"@s{stage}x{format_ratio(ratio)}" for stage, ratio in self.stage_ratios)


WidthLike = Union[float, str, WidthConfig]


def parse_width_list(spec: str | Iterable[str]) -> list[WidthConfig]:
    """Parse ``"0.25:1.0:0.025"`` (inclusive range), ``"0.25,0.5,1.0"`` or a
    list of config strings into width configs."""
    parts: list[str] = []
    for item in ([spec] if isinstance(spec, str) else list(spec)):
        parts.extend(p for p in item.split(",") if p.strip())
    if not parts:
        raise UsageError("no widths given; use e.g. --widths 0.25:1.0:0.025")
    configs: list[WidthConfig] = []
    for part in parts:
        part = part.strip()
        if ":" in part and not part.startswith("layers:"):
            configs.extend(_parse_range(part))
        else:
            configs.append(WidthConfig.parse(part))
    unique: dict[str, WidthConfig] = {}
    for c in configs:
        unique.setdefault(str(c), c)
    return list(unique.values())


def _parse_range(part: str) -> list[WidthConfig]:
    pieces = part.split(":")
    try:
        if len(pieces) != 3:
            raise ValueError
        start, stop, step = (float(p) for p in pieces)
    except ValueError:
        raise UsageError(f"malformed width range {part!r}; expected START:STOP:STEP "
                         "such as 0.25:1.0:0.025") from None
    if step <= 0:
        raise UsageError(f"width range {part!r} needs a positive step")
    if stop < start:
        raise UsageError(f"width range {part!r} is inverted; write the smaller width first")
    count = int(math.floor((stop - start) / step + 1e-6)) + 1
    return [WidthConfig(width=start + i * step) for i in range(count)]


def stage_variants(configs: Sequence[WidthConfig], stages: Sequence[int],
                   ratio: float) -> list[WidthConfig]:
    """Each uniform config with ``ratio`` applied to each of ``stages`` in
    turn (the US-Nets paper's Figure 1: "0.6 on stage 5 on top of the global width")."""
    ratio = _check_ratio(ratio, "stage ratio")
    out = []
    for stage in stages:
        for c in configs:
            if c.layer_ratios is not None or c.switch is not None:
                raise UsageError("stage ratios apply to uniform widths, not per-layer configs "
                                 "or named switches")
            merged = dict(c.stage_ratios)
            merged[stage] = round(merged.get(stage, 1.0) * ratio, NUM_DIGITS)
            out.append(WidthConfig.with_stages(c.width, merged))
    return out
