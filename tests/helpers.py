"""Test helpers: an independent dense MobileNet v1 and tiny image folders."""
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from usspectrum.nn.layers import SwitchableBatchNorm2d, USBatchNorm2d


def randomize_bn(model):
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, USBatchNorm2d)):
            n = m.weight.numel()
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
            assert m.running_mean.numel() == n


def dense_bn(bn, c, switch=None, stats=None):
    """A plain BN of ``c`` channels from ``bn``'s first channels; ``stats``
    ({id(bn): (mean, var)}) overrides the running statistics."""
    src = bn.bn[switch] if isinstance(bn, SwitchableBatchNorm2d) else bn
    out = nn.BatchNorm2d(c, eps=src.eps)
    out.weight.data = src.weight[:c].clone()
    out.bias.data = src.bias[:c].clone()
    mean, var = (stats or {}).get(id(bn), (src.running_mean[:c], src.running_var[:c]))
    out.running_mean = mean.clone()
    out.running_var = var.clone()
    return out


def dense_copy(model, channels, switch=None, average=False, stats=None):
    stem_conv, stem_bn = model.features[0][0], model.features[0][1]
    conv = nn.Conv2d(3, channels[0], 3, stem_conv.stride, 1, bias=False)
    conv.weight.data = stem_conv.weight[: channels[0]].clone()
    layers = [conv, dense_bn(stem_bn, channels[0], switch, stats), nn.ReLU6()]
    for i, block in enumerate(model.features[1:], start=1):
        cin, cout = channels[i - 1], channels[i]
        dw, dbn, _, pw, pbn, _ = block.body
        d = nn.Conv2d(cin, cin, 3, dw.stride, 1, groups=cin, bias=False)
        d.weight.data = dw.weight[:cin].clone()
        p = nn.Conv2d(cin, cout, 1, bias=False)
        p.weight.data = pw.weight[:cout, :cin].clone()
        if average:
            p.weight.data *= pw.in_channels / cin
        layers += [d, dense_bn(dbn, cin, switch, stats), nn.ReLU6(), p, dense_bn(pbn, cout, switch, stats), nn.ReLU6()]
    fc = model.classifier[0]
    lin = nn.Linear(channels[-1], fc.out_features)
    lin.weight.data = fc.weight[:, : channels[-1]].clone()
    lin.bias.data = fc.bias.clone()
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin).eval()




CLASSES = ["ant", "bee", "cat"]


def make_image_folder(root: Path, classes=CLASSES, per_class=4, size=32, seed=0) -> Path:
    """A tiny ImageFolder tree (train/ and val/) of random PNG images."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


BASES = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]


def hand_channels(ratios):
    """Slot channels of MobileNet v1 by the facts file's rounding rule."""
    from usspectrum import make_divisible

    return [make_divisible(b * r) for b, r in zip(BASES, ratios)]


def bn_sizes(width):
    """{bn name: channels} of MobileNet v1 at a uniform width, by hand."""
    ch = hand_channels([width] * 14)
    sizes = {"features.0.1": ch[0]}
    for k in range(1, 14):
        sizes[f"features.{k}.body.1"] = ch[k - 1]
        sizes[f"features.{k}.body.4"] = ch[k]
    return sizes


# --- MobileNet v2, built by hand from the facts file's description ---------------

V2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1)]


def v2_bn_sizes(width, repeats=None):
    """{bn name: channels} of the authors' US-MobileNet v2 at a uniform width:
    block in/out keep make_divisible(C * w), the expansion t times
    make_divisible(C_in * w); the 1280-channel conv's BN is left out (plain)."""
    from usspectrum import make_divisible as md

    cin = md(32 * width)
    sizes = {"features.0.1": cin}
    k = 1
    for (t, c, n, _), count in zip(V2_STAGES, repeats or [s[2] for s in V2_STAGES]):
        for _ in range(count):
            cout, hidden = md(c * width), t * cin
            if t == 1:
                sizes.update({f"features.{k}.body.1": cin, f"features.{k}.body.4": cout})
            else:
                sizes.update({f"features.{k}.body.1": hidden, f"features.{k}.body.4": hidden,
                              f"features.{k}.body.7": cout})
            cin, k = cout, k + 1
    return sizes


class HandV2(nn.Module):
    def __init__(self, stem, blocks, tail, fc):
        super().__init__()
        self.stem, self.tail, self.fc = stem, tail, fc
        self.bodies = nn.ModuleList(b for b, _ in blocks)
        self.residual = [r for _, r in blocks]

    def forward(self, x):
        x = self.stem(x)
        for body, residual in zip(self.bodies, self.residual):
            y = body(x)
            x = x + y if residual else y
        x = self.tail(x).mean((2, 3))
        return self.fc(x)


def _conv_from(src, cin, cout, k, stride, groups=1):
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
    conv.weight.data = src.weight[:cout, : cin // groups].clone()
    return conv


def dense_v2(model, width, switch=None, stats=None, stem_stride=1, repeats=None):
    """The authors' MobileNet v2 at a uniform ``width``, as plain layers cut
    from ``model``'s weights (module names of the release)."""
    from usspectrum import make_divisible as md

    f = model.features
    cin = md(32 * width)
    stem = nn.Sequential(_conv_from(f[0][0], 3, cin, 3, stem_stride),
                         dense_bn(f[0][1], cin, switch, stats), nn.ReLU6())
    blocks, k, full_in = [], 1, 32
    for (t, c, n, s), count in zip(V2_STAGES, repeats or [s[2] for s in V2_STAGES]):
        for i in range(count):
            body, stride = f[k].body, s if i == 0 else 1
            cout, hidden = md(c * width), t * cin
            layers, j = [], 0
            if t != 1:
                layers += [_conv_from(body[0], cin, hidden, 1, 1),
                           dense_bn(body[1], hidden, switch, stats), nn.ReLU6()]
                j = 3
            layers += [_conv_from(body[j], hidden, hidden, 3, stride, groups=hidden),
                       dense_bn(body[j + 1], hidden, switch, stats), nn.ReLU6(),
                       _conv_from(body[j + 3], hidden, cout, 1, 1),
                       dense_bn(body[j + 4], cout, switch, stats)]
            blocks.append((nn.Sequential(*layers), stride == 1 and full_in == c))
            cin, full_in, k = cout, c, k + 1
    tail_bn = f[k][1]
    tail = nn.Sequential(_conv_from(f[k][0], cin, 1280, 1, 1), dense_bn(tail_bn, 1280, None, stats),
                         nn.ReLU6())
    src = model.classifier[0]
    fc = nn.Linear(1280, src.out_features)
    fc.weight.data, fc.bias.data = src.weight.clone(), src.bias.clone()
    return HandV2(stem, blocks, tail, fc).eval()


def release_ops(state, switch):
    """A release state dict without its ``module.`` prefixes, and the
    authors' slimmable layers at switch number ``switch`` as functions:
    ``bn(name, y)`` (that switch's BN over y's channels) and
    ``conv(name, y, out, stride=1, groups=1)`` (the first ``out`` filters
    over y's channels, padding kernel // 2)."""
    import torch.nn.functional as F

    s = {k.removeprefix("module."): v for k, v in state.items()}

    def bn(name, y):
        p, c = f"{name}.bn.{switch}.", y.shape[1]
        return F.batch_norm(y, s[p + "running_mean"][:c], s[p + "running_var"][:c],
                            s[p + "weight"][:c], s[p + "bias"][:c], False, 0.0, 1e-5)

    def conv(name, y, out, stride=1, groups=1):
        w = s[f"{name}.weight"]
        return F.conv2d(y, w[:out, :y.shape[1] // groups], None, stride, w.shape[-1] // 2, 1,
                        groups)

    return s, bn, conv
