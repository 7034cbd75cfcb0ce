"""Training-time convolutions that beat ATen's generic CPU paths on the
shapes slimmable MobileNets have (measured in ``benchmarks/bench_train.py``).

Two autograd functions, both exact reformulations of ``F.conv2d``:

- :func:`pointwise_conv`: a 1x1 conv on a channels-last activation is a
  matrix product of the ``(N*H*W, C_in)`` view with the weight. MKL's GEMM
  handles the arbitrary channel counts of a slimmed layer (and the strided
  weight slice) better than oneDNN's convolution, which re-lays-out the
  weight on every call.
- :func:`depthwise_conv`: oneDNN computes the weight gradient of a 3x3
  depthwise conv on a 2x2 activation (MobileNet's last stage on CIFAR) about
  25x slower than the forward pass; nine shifted products summed over the
  batch give the same gradient in a fraction of the time.

They are used while training only (grad enabled, channels-last input):
evaluation, tracing for FLOPs and export keep plain ``F.conv2d``.

:func:`disabled` switches them off (the reference path in tests and
benchmarks).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

# Below this many output pixels the tap-wise weight gradient wins (measured:
# 2x2 outputs 0.7-1 ms vs 6-24 ms; 4x4 outputs lose, 1.4 vs 0.2 ms).
TAPS_MAX_PIXELS = 4
# 1x1 convs on larger maps stay with oneDNN, which wins there (32x32: 6.9 vs
# 7.9 ms forward+backward; 8x8 and below: GEMM wins, 256 channels 11.2 vs 14.9 ms).
POINTWISE_MAX_SIDE = 8

_enabled = True


def enabled() -> bool:
    """Whether slimmable layers may use these kernels."""
    return _enabled


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run slimmable layers on plain ``F.conv2d`` inside the block."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def is_channels_last(x: torch.Tensor) -> bool:
    """True when ``x`` is a 4-D tensor laid out NHWC in memory (a 1x1
    spatial tensor counts either way)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """The ``(N*H*W, C)`` matrix of an NCHW-shaped tensor (a view when it
    is channels-last, else a copy)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


class _PointwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        rows = _rows(x)
        matrix = weight.reshape(weight.shape[0], weight.shape[1])
        ctx.save_for_backward(rows, matrix)
        ctx.shape = (n, h, w)
        out = torch.mm(rows, matrix.t())
        return out.view(n, h, w, -1).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, matrix = ctx.saved_tensors
        n, h, w = ctx.shape
        grad_rows = _rows(grad)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(grad_rows, matrix).view(n, h, w, -1).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            grad_w = torch.mm(grad_rows.t(), rows)[:, :, None, None]
        return grad_x, grad_w


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(x, weight)`` for a 1x1, stride-1, bias-free conv of a
    channels-last ``x``, as matrix products; the output is channels-last."""
    return _PointwiseConv.apply(x, weight)


def depthwise_weight_grad(grad: torch.Tensor, x: torch.Tensor, kernel: int, stride: int,
                          padding: int) -> torch.Tensor:
    """Weight gradient of a depthwise conv: for each kernel tap, the
    batch-and-pixel sum of the output gradient times the input shifted to
    that tap."""
    _, c, ho, wo = grad.shape
    padded = F.pad(x, (padding,) * 4)
    taps = []
    for i in range(kernel):
        for j in range(kernel):
            shifted = padded[:, :, i:i + stride * (ho - 1) + 1:stride,
                             j:j + stride * (wo - 1) + 1:stride]
            taps.append((grad * shifted).sum((0, 2, 3)))
    return torch.stack(taps, 1).view(c, 1, kernel, kernel)


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: int,
                padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        s, p, c = ctx.stride, ctx.padding, x.shape[1]
        want_x, want_w = ctx.needs_input_grad[:2]
        taps = want_w and grad.shape[2] * grad.shape[3] <= TAPS_MAX_PIXELS
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, [s, s], [p, p], [1, 1], False, [0, 0], c,
            [want_x, want_w and not taps, False])
        if taps:
            grad_w = depthwise_weight_grad(grad, x, weight.shape[-1], s, p)
        return grad_x, grad_w, None, None


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, stride: int,
                   padding: int) -> torch.Tensor:
    """``F.conv2d(x, weight, None, stride, padding, groups=C)`` with a
    faster weight gradient on tiny activations."""
    return _DepthwiseConv.apply(x, weight, stride, padding)



class _InplaceReLU6(torch.autograd.Function):
    """ReLU6 in place with the gradient ATen's ``hardtanh_`` uses (masked by
    the result), without the copy of the activation that autograd makes for
    an in-place ``hardtanh_``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x.clamp_(0.0, 6.0)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (result,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, result, 0.0, 6.0)


def relu6_(x: torch.Tensor) -> torch.Tensor:
    """``F.relu6(x, inplace=True)`` for training: same values and gradient."""
    return _InplaceReLU6.apply(x)


def slow_channels_last_bn_backward(x: torch.Tensor) -> bool:
    """ATen's channels-last BN backward takes about 10x its NCHW time when
    the channel count is below 32 and not a multiple of 16 (measured: 8
    channels at 32x32, batch 128, 9.0 ms against 1.1 ms including the two
    layout copies); such shapes go through NCHW."""
    c = x.shape[1]
    return c < 32 and c % 16 != 0


class _BatchNormTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        out, mean, invstd = torch.ops.aten.native_batch_norm(
            x, weight, bias, running_mean, running_var, True, momentum, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, invstd = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        reroute = slow_channels_last_bn_backward(x) and is_channels_last(x)
        if reroute:
            grad, x = grad.contiguous(), x.contiguous()
        grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
            grad, x, weight, None, None, mean, invstd, True, ctx.eps, mask)
        if reroute and grad_x is not None:
            grad_x = grad_x.contiguous(memory_format=torch.channels_last)
        return grad_x, grad_w, grad_b, None, None, None, None


def batch_norm_train(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                     weight: torch.Tensor, bias: torch.Tensor, momentum: float,
                     eps: float) -> torch.Tensor:
    """``F.batch_norm(..., training=True)``: the same forward (running
    statistics updated in place), with the backward routed through NCHW
    where ATen's channels-last kernel is slow."""
    return _BatchNormTrain.apply(x, weight, bias, running_mean, running_var, momentum, eps)
