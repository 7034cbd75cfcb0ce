"""The training kernels compute what F.conv2d computes, and a training step
through them (channels-last) gives the losses and gradients of the plain
NCHW step for every kind of model."""
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import usspectrum
from usspectrum.nn import kernels
from usspectrum.nn.kernels import depthwise_conv, depthwise_weight_grad, pointwise_conv
from usspectrum.training.steps import SandwichSampler, local_step

CL = torch.channels_last


def _grads(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("side,cin,cout", [(2, 24, 40), (4, 64, 48), (8, 16, 16)])
def test_pointwise_conv_matches_conv2d(side, cin, cout):
    x = torch.randn(5, cin, side, side).contiguous(memory_format=CL)
    full = torch.randn(cout + 8, cin + 16, 1, 1)
    weight = full[:cout, :cin]  # a strided slice, as a slimmed layer passes it
    assert not weight.is_contiguous()
    ref, ref_grads = _grads(lambda a, w: F.conv2d(a, w), x, weight)
    got, got_grads = _grads(pointwise_conv, x, weight)
    assert got.is_contiguous(memory_format=CL)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("side,stride", [(2, 1), (4, 2), (4, 1), (8, 1), (3, 1)])
def test_depthwise_conv_matches_conv2d(side, stride):
    c = 40
    x = torch.randn(6, c, side, side).contiguous(memory_format=CL)
    weight = torch.randn(c, 1, 3, 3)
    ref, ref_grads = _grads(lambda a, w: F.conv2d(a, w, None, stride, 1, 1, c), x, weight)
    got, got_grads = _grads(lambda a, w: depthwise_conv(a, w, stride, 1), x, weight)
    torch.testing.assert_close(got, ref)
    for g, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4)


def test_tap_weight_gradient_by_definition():
    # sum over batch and pixels of grad * input at the tap's offset, by loops
    x, grad = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    expected = torch.zeros(3, 1, 3, 3)
    for n in range(2):
        for c in range(3):
            for i in range(3):
                for j in range(3):
                    for h in range(2):
                        for w in range(2):
                            hi, wi = h + i - 1, w + j - 1
                            if 0 <= hi < 2 and 0 <= wi < 2:
                                expected[c, 0, i, j] += grad[n, c, h, w] * x[n, c, hi, wi]
    torch.testing.assert_close(depthwise_weight_grad(grad, x, 3, 1, 1), expected)


def _step(kind, nonuniform, fast):
    arch = {"us": "us_mobilenet_v1", "slimmable": "s_mobilenet_v1",
            "individual": "mobilenet_v1"}[kind]
    torch.manual_seed(0)
    # float64: with batch 8, BN's backward divides by small variances and the
    # two paths' float32 summation orders alone differ by ~0.5% at the stem
    model = usspectrum.create_model(arch, stem="cifar", num_classes=10,
                                    repeats=(1, 1, 1, 2, 2)).train().double()
    torch.manual_seed(1)
    images, labels = torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (8,))
    if fast:
        model.to(memory_format=CL)
        images = images.contiguous(memory_format=CL)
    criterion = nn.CrossEntropyLoss()
    used = []
    model.features[-1].register_forward_pre_hook(
        lambda m, i: used.append(i[0].is_contiguous(memory_format=CL)))
    if kind == "us":
        widths = SandwichSampler((0.25, 1.0), 4, len(model.slots), nonuniform,
                                 random.Random(3)).draw()
        losses = local_step(model, "us", images, labels, criterion, widths, True)
    elif kind == "slimmable":
        losses = local_step(model, "slimmable", images, labels, criterion,
                            switches=(0.25, 0.5, 0.75, 1.0))
    else:
        losses = local_step(model, "individual", images, labels, criterion)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return losses, grads, buffers, used


@pytest.mark.parametrize("kind,nonuniform", [("us", False), ("us", True), ("slimmable", False),
                                             ("individual", False)])
def test_training_step_equals_plain_path(kind, nonuniform):
    with kernels.disabled():
        ref_losses, ref_grads, ref_buffers, ref_used = _step(kind, nonuniform, fast=False)
    losses, grads, buffers, used = _step(kind, nonuniform, fast=True)
    assert all(used) and not any(ref_used)  # the two runs took different paths
    assert losses == pytest.approx(ref_losses, rel=1e-10, abs=1e-12)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-8, atol=1e-10, msg=name)
    for name, value in buffers.items():
        torch.testing.assert_close(value, ref_buffers[name], rtol=1e-10, atol=1e-12, msg=name)


def test_fast_path_is_used_in_training_only(monkeypatch):
    import usspectrum.nn.layers as layers

    model = usspectrum.create_model("mobilenet_v1", stem="cifar", num_classes=10,
                                    repeats=(1, 1, 1, 1, 1)).to(memory_format=CL)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=CL)
    calls = []
    monkeypatch.setattr(layers, "depthwise_conv",
                        lambda *a: calls.append(1) or depthwise_conv(*a))
    model.eval()(x)
    assert not calls
    with torch.no_grad():
        model.train()(x)
    assert not calls
    model.train()(x)
    assert calls


def _clone_count(fn) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.clone, torch.ops.aten.copy_):
                Count.n += 1
            return func(*args, **(kwargs or {}))
    with Count():
        fn()
    return Count.n


def test_inplace_relu6_matches_hardtanh_and_copies_nothing():
    from usspectrum.nn.kernels import relu6_
    torch.manual_seed(0)
    base = torch.randn(4, 8, 5, 5) * 5
    base[0, 0, 0, :3] = torch.tensor([0.0, 6.0, -0.0])  # the edges, where the gradient is 0
    grad = torch.randn(4, 8, 5, 5)
    outs, grads = [], []
    for fn in (lambda t: F.relu6(t, inplace=True), relu6_):
        x = base.clone().requires_grad_()
        y = fn(x * 1.0)
        y.backward(grad)
        outs.append(y.detach())
        grads.append(x.grad)
    assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])
    x = base.clone().requires_grad_()
    assert _clone_count(lambda: F.relu6(x * 1.0, inplace=True)) >= 1  # what relu6_ avoids
    assert _clone_count(lambda: relu6_(x * 1.0)) == 0


@pytest.mark.parametrize("channels", [8, 24, 32])
def test_training_batch_norm_matches_aten(channels):
    """Same output and running statistics as F.batch_norm; gradients equal
    to ATen's, bit for bit where it keeps channels-last and within float
    tolerance where it goes through NCHW (8 and 24 channels)."""
    from usspectrum.nn.kernels import batch_norm_train, slow_channels_last_bn_backward
    torch.manual_seed(0)
    x0 = torch.randn(6, channels, 9, 9).contiguous(memory_format=torch.channels_last) * 3 + 1
    g = torch.randn(6, channels, 9, 9).contiguous(memory_format=torch.channels_last)
    w0, b0 = torch.rand(channels) + 0.5, torch.randn(channels)
    results = []
    for fn in (F.batch_norm, batch_norm_train):
        x = x0.clone().requires_grad_()
        w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
        mean, var = torch.zeros(channels), torch.ones(channels)
        if fn is F.batch_norm:
            y = F.batch_norm(x, mean, var, w, b, True, 0.1, 1e-5)
        else:
            y = batch_norm_train(x, mean, var, w, b, 0.1, 1e-5)
        y.backward(g)
        results.append((y.detach(), mean, var, x.grad, w.grad, b.grad))
    ref, ours = results
    for a, b_ in zip(ref[:3], ours[:3]):
        assert torch.equal(a, b_)
    assert ours[3].is_contiguous(memory_format=torch.channels_last)
    if slow_channels_last_bn_backward(x0):
        for a, b_ in zip(ref[3:], ours[3:]):
            torch.testing.assert_close(a, b_, rtol=1e-5, atol=1e-5)
    else:
        assert all(torch.equal(a, b_) for a, b_ in zip(ref[3:], ours[3:]))
