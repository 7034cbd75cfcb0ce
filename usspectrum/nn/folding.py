"""Dense sub-networks: one width of a slimmable network as a plain model.

Slicing full-size weights on every forward leaves speed unused: the sliced
weights are strided views, BN runs as a separate memory-bound pass, and the
activations stay in NCHW. :func:`to_dense` copies one width's weights into
ordinary ``nn.Conv2d``/``nn.Linear`` layers, folds each BN into the conv in
front of it (with the statistics that width would use in eval mode) and
stores everything channels-last, which is what oneDNN's CPU convolutions
prefer. The result is a standalone ``nn.Sequential`` (with a nested
:class:`DenseResidual` for each skip connection) that needs nothing from
usspectrum to run, trace or export.
"""
from __future__ import annotations

import copy
import functools
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import Branches, Residual, SlimBatchNormBase, SlimConv2d, SlimLinear
from .width import WidthConfig, WidthLike


class FoldedNet(nn.Sequential):
    """A plain chain of layers of one width.

    ``width`` is the width string it was built from, ``sources`` maps each
    leaf layer's qualified name (``features_3.features_3_body_0`` inside a
    residual block) to the name of the slimmable module it came from (a
    folded BN has no layer of its own), ``bn_sources`` does the same for
    unfolded BN layers."""

    def __init__(self, layers: "OrderedDict[str, nn.Module]", width: str,
                 channels_last: bool, sources: dict[str, str]) -> None:
        super().__init__(layers)
        self.width = width
        self.channels_last = channels_last
        self.sources = sources
        self.bn_sources = {k: v for k, v in sources.items()
                           if isinstance(self.get_submodule(k), nn.modules.batchnorm._BatchNorm)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for layer in self:
            x = layer(x)
        return x


class DenseResidual(nn.Sequential):
    """``x + chain(x)``: a residual block of a dense network."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for layer in self:
            y = layer(y)
        return x + y


class DenseProjection(nn.Module):
    """``body(x) + shortcut(x)``: a residual block whose shortcut is a
    projection (1x1 conv + BN) of a dense network."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Sequential) -> None:
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class DenseConcat(nn.Module):
    """``cat(body(x), shortcut(x))``: a block that appends its shortcut's
    channels (ShuffleNet's strided blocks) in a dense network."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Sequential) -> None:
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.body(x), self.shortcut(x)], 1)


class DenseBranches(nn.ModuleList):
    """Parallel chains whose outputs are concatenated; with ``split`` chain
    ``i`` reads the ``i``-th equal channel chunk of the input, else all of it
    (see :class:`~usspectrum.nn.layers.Branches`)."""

    def __init__(self, branches: list[nn.Sequential], split: bool) -> None:
        super().__init__(branches)
        self.split = split

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x.chunk(len(self), 1) if self.split else [x] * len(self)
        return torch.cat([branch(part) for branch, part in zip(self, parts)], 1)


def chains(net: nn.Sequential) -> list[nn.Sequential]:
    """``net`` and every chain of layers nested in it (residual bodies,
    shortcuts, parallel branches), outermost first."""
    return [net, *(m for m in net.modules() if isinstance(m, nn.Sequential) and m is not net)]


@torch.no_grad()
def to_dense(model: nn.Module, width: WidthLike | None = None, *, fold_bn: bool = True,
             channels_last: bool = True, fuse_activations: bool = False) -> FoldedNet:
    """The plain network that ``model`` computes at ``width`` (default: the
    width it is set to) in eval mode.

    With ``fold_bn`` every BN that follows a conv is folded into it; without,
    BN layers become ``nn.BatchNorm2d`` carrying that width's statistics
    (used for calibration). ``fuse_activations`` merges each conv with the
    ReLU6 after it (:class:`ConvClamp`; for running here, not for export).
    Outputs equal the sliced model's up to float rounding."""
    previous = model.width_config
    config = previous if width is None else WidthConfig.coerce(width)
    model.set_width(config)
    try:
        layers, sources = _dense_layers(model, fold_bn)
    finally:
        model.set_width(previous)
    if fuse_activations:
        layers = _fuse_activations(layers)
    net = FoldedNet(layers, str(config), channels_last, sources).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def _dense_layers(model: nn.Module, fold_bn: bool):
    sequence = model.layer_sequence()
    first = next(m for m in model.modules() if isinstance(m, SlimConv2d))
    layers, sources, _ = _dense_chain(sequence, fold_bn, first.in_channels, "")
    return layers, sources


def _dense_chain(sequence, fold_bn: bool, channels: int, path: str):
    """Dense layers of ``sequence`` entered with ``channels`` channels;
    returns them, the sources of their leaves (qualified by ``path``) and
    the channel count they leave."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    sources: dict[str, str] = {}
    last = None  # the layer just added, for folding
    for name, module in sequence:
        key = name.replace(".", "_")
        if isinstance(module, (Residual, Branches)):
            build = _dense_residual if isinstance(module, Residual) else _dense_branches
            layers[key], block_sources, channels = build(name, module, fold_bn, channels,
                                                         f"{path}{key}.")
            sources.update(block_sources)
            last = layers[key]
            continue
        if isinstance(module, SlimConv2d):
            layer = _dense_conv(module, channels)
            channels = layer.out_channels
        elif isinstance(module, SlimBatchNormBase):
            if fold_bn and isinstance(last, nn.Conv2d):
                _fold(last, module, channels)
                continue
            layer = _dense_bn(module, channels)
        elif isinstance(module, SlimLinear):
            out = module.out_features if module.out_active is None else module.out_active
            layer = nn.Linear(channels, out, bias=module.bias is not None,
                              device=module.weight.device, dtype=module.weight.dtype)
            layer.weight.copy_(module.weight[:out, :channels])
            if module.bias is not None:
                layer.bias.copy_(module.bias[:out])
            channels = out
        elif any(True for _ in module.parameters(recurse=False)) or isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise TypeError(f"cannot make {name} ({type(module).__name__}) dense")
        elif isinstance(module, nn.ReLU6):
            layer = nn.ReLU6(inplace=module.inplace)  # the plain module: exports need no usspectrum
        else:
            layer = copy.deepcopy(module)
        layers[key] = layer
        sources[path + key] = name
        last = layer
    return layers, sources, channels


def _dense_residual(name: str, block: Residual, fold_bn: bool, channels: int, path: str):
    """A residual block as a :class:`DenseResidual` (identity shortcut) or
    :class:`DenseProjection`; its sources and output channels."""
    if block.shortcut is None:
        inner, sources, out = _dense_chain(block.layers, fold_bn, channels, path)
        if out != channels:
            raise ValueError(f"residual block {name} maps {channels} channels to {out}; "
                             "its input and output must share one width slot")
        return DenseResidual(inner), sources, out
    body, sources, out = _dense_chain(block.layers, fold_bn, channels, path + "body.")
    short, short_sources, short_out = _dense_chain(block.shortcut, fold_bn, channels,
                                                   path + "shortcut.")
    if block.merge == "concat":
        return (DenseConcat(nn.Sequential(body), nn.Sequential(short)),
                {**sources, **short_sources}, out + short_out)
    if out != short_out:
        raise ValueError(f"residual block {name}: its body gives {out} channels and its "
                         f"shortcut {short_out}; the two must share one width slot")
    return (DenseProjection(nn.Sequential(body), nn.Sequential(short)),
            {**sources, **short_sources}, out)


def _dense_branches(name: str, entry: Branches, fold_bn: bool, channels: int, path: str):
    """Parallel branches as :class:`DenseBranches`; their sources and the
    channels of the concatenated output."""
    count = len(entry.branches)
    if entry.split and channels % count:
        raise ValueError(f"{name} splits its input into {count} groups, but it gets "
                         f"{channels} channels")
    inner = channels // count if entry.split else channels
    chains_, sources, out = [], {}, 0
    for i, branch in enumerate(entry.branches):
        layers, branch_sources, branch_out = _dense_chain(branch, fold_bn, inner, f"{path}{i}.")
        chains_.append(nn.Sequential(layers))
        sources.update(branch_sources)
        out += branch_out
    return DenseBranches(chains_, entry.split), sources, out


def _dense_conv(conv: SlimConv2d, channels: int) -> nn.Conv2d:
    out, per_group, groups = conv.active_shape(channels)
    layer = nn.Conv2d(channels, out, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                      groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    weight = conv.weight[:out, :per_group]
    if conv.average_output and channels != conv.in_channels:
        weight = weight * (conv.in_channels / channels)
    layer.weight.copy_(weight)
    if conv.bias is not None:
        layer.bias.copy_(conv.bias[:out])
    return layer


def _fold(conv: nn.Conv2d, bn: SlimBatchNormBase, channels: int) -> None:
    """Fold ``bn`` (eval mode, at ``channels``) into ``conv`` in float64."""
    gamma, beta = bn.affine(channels)
    mean, var = bn.eval_stats(channels, conv.weight.device)
    scale = gamma.double() / torch.sqrt(var.double() + bn.eps)
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    bias = beta.double() + (bias - mean.double()) * scale
    conv.weight.copy_(weight.to(conv.weight.dtype))
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype))


def _dense_bn(bn: SlimBatchNormBase, channels: int) -> nn.BatchNorm2d:
    gamma, beta = bn.affine(channels)
    mean, var = bn.eval_stats(channels, gamma.device)
    layer = nn.BatchNorm2d(channels, eps=bn.eps, momentum=bn.momentum,
                           device=gamma.device, dtype=gamma.dtype)
    layer.weight.copy_(gamma)
    layer.bias.copy_(beta)
    layer.running_mean.copy_(mean)
    layer.running_var.copy_(var)
    return layer


class ConvClamp(nn.Module):
    """A conv followed by ``clamp(lo, hi)`` (ReLU6), as one oneDNN call on
    CPUs: the clamp is applied to each output block while it is still in
    cache instead of in a second pass over memory (1.07x to 1.15x per
    forward measured on the CIFAR-stem MobileNet v1, same outputs). Other
    devices and dtypes run the conv, then the clamp."""

    def __init__(self, conv: nn.Conv2d, lo: float, hi: float) -> None:
        super().__init__()
        self.conv, self.lo, self.hi = conv, float(lo), float(hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, fused = self.conv, fused_conv_op()
        if fused is not None and x.device.type == "cpu" and x.dtype == torch.float32:
            return fused(x, conv.weight, conv.bias, list(conv.padding), list(conv.stride),
                         list(conv.dilation), conv.groups, "hardtanh", [self.lo, self.hi], "")
        return F.hardtanh(conv(x), self.lo, self.hi)


@functools.lru_cache(maxsize=None)
def fused_conv_op():
    """oneDNN's fused conv + elementwise op, or None where this torch lacks it."""
    try:
        op = torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return None
    return op if torch.backends.mkldnn.is_available() else None


def _fuse_activations(layers: "OrderedDict[str, nn.Module]") -> "OrderedDict[str, nn.Module]":
    fused: OrderedDict[str, nn.Module] = OrderedDict()
    items = list(layers.items())
    i = 0
    while i < len(items):
        key, layer = items[i]
        if isinstance(layer, DenseResidual):
            fused[key] = DenseResidual(_fuse_activations(OrderedDict(layer.named_children())))
            i += 1
            continue
        if isinstance(layer, DenseProjection):
            fused[key] = DenseProjection(
                nn.Sequential(_fuse_activations(OrderedDict(layer.body.named_children()))),
                nn.Sequential(_fuse_activations(OrderedDict(layer.shortcut.named_children()))))
            i += 1
            continue
        after = items[i + 1][1] if i + 1 < len(items) else None
        if (isinstance(layer, nn.Conv2d) and isinstance(after, nn.ReLU6)
                and layer.padding_mode == "zeros" and not isinstance(layer.padding, str)):
            fused[key] = ConvClamp(layer, 0.0, 6.0)
            fused[items[i + 1][0]] = nn.Identity()  # keeps the layer names
            i += 2
        else:
            fused[key] = layer
            i += 1
    return fused
