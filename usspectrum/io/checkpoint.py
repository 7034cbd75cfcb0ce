"""Checkpoints: the self-describing usspectrum format and the authors' release.

usspectrum format (a dict, saved with ``torch.save``, read with
``weights_only=True``)::

    format: "usspectrum", version: 1
    arch: {name, kwargs}        # enough to rebuild the model
    kind, width_range, switches # for the reader; rebuilt from arch anyway
    class_names: [...]
    image: ImageSpec as a dict  # input size, normalization, resize
    train: {...}                # recipe, seed, epochs done, ...
    state_dict: {...}
    bn_stats: {width_key: {bn_name: (mean, var)}}   # calibrated statistics

The authors' release is ``{'model': state_dict}`` saved from DataParallel
(``module.`` prefixes); US-MobileNet v1 and v2 keep per-width statistics in
``bn.{i}.running_*`` of each BN and S-MobileNet v1 and v2 four whole BNs per
layer (v2's 1280-channel conv has one plain BN in both); S-ResNet-50 four
whole BNs per layer and S-ShuffleNet three. State dicts of torchvision's ``mobilenet_v2`` and
``resnet50`` load as the individual MobileNet v2 and ResNet-50.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from ..nn.bn_stats import get_bn_stats, set_bn_stats
from .data import ImageSpec
from ..errors import USSpectrumError
from ..nn.layers import USBatchNorm2d, slim_batchnorms
from ..models import create_model
from ..models.mobilenet_v1 import DEFAULT_SWITCHES
from ..models.mobilenet_v2 import DEFAULT_SWITCHES as V2_SWITCHES
from ..models.resnet import DEFAULT_SWITCHES as RESNET_SWITCHES, DEPTH as RESNET_DEPTH
from ..models.shufflenet import DEFAULT_SWITCHES as SHUFFLENET_SWITCHES, DEPTH as SHUFFLENET_DEPTH
from .results import atomic_write_bytes
from ..nn.width import WidthConfig, parse_width_list

FORMAT, VERSION = "usspectrum", 1
RELEASE_US_WIDTHS = "0.25:1.0:0.025"  # the 31 widths of the released US-MobileNet v1
RELEASE_V2_US_WIDTHS = "0.35:1.0:0.025"  # the 27 widths of the released US-MobileNet v2
_BN_STAT = re.compile(r"^(?P<bn>.+)\.bn\.(?P<i>\d+)\.(?P<field>running_mean|running_var|num_batches_tracked)$")


def fingerprint(path: str | os.PathLike) -> str:
    """Short SHA-256 of a file, to recognise results of the same checkpoint."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def weights_checksum(obj: dict) -> str:
    """SHA-256 of the tensors of a checkpoint dict (``state_dict`` and
    ``bn_stats``), key by key: a zip archive's own checks let flipped bytes
    inside tensor data load silently."""
    digest = hashlib.sha256()

    def add(key: str, t: torch.Tensor) -> None:
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())

    for key in sorted(obj.get("state_dict", {})):
        add(key, obj["state_dict"][key])
    for width in sorted(obj.get("bn_stats", {})):
        for name in sorted(obj["bn_stats"][width]):
            for i, t in enumerate(obj["bn_stats"][width][name]):
                add(f"{width}/{name}/{i}", t)
    return digest.hexdigest()[:32]


def save_checkpoint(model: nn.Module, path: str | os.PathLike, *,
                    class_names: Sequence[str] | None = None, image: ImageSpec | None = None,
                    train: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                    ) -> None:
    """Write ``model`` (with its calibrated BN statistics) atomically."""
    meta = getattr(model, "meta", {})
    image = image or meta.get("image") or ImageSpec.for_size(model.default_image_size)
    payload = {
        "format": FORMAT, "version": VERSION,
        "arch": {"name": model.arch["name"], "kwargs": dict(model.arch["kwargs"])},
        "kind": model.kind, "width_range": tuple(model.width_range),
        "switches": None if model.switches is None else tuple(model.switches),
        "class_names": list(class_names if class_names is not None else meta.get("class_names", [])),
        "image": image.to_dict(),
        "train": dict(train if train is not None else meta.get("train", {})),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "bn_stats": get_bn_stats(model),
    }
    payload.update(extra or {})
    payload["checksum"] = weights_checksum(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load`` with ``weights_only=True`` and errors a user can act on."""
    path = Path(path)
    if path.is_dir():
        raise USSpectrumError(f"checkpoint {path} is a folder, not a file; give the path of "
                              "the checkpoint file inside it (e.g. model.pt)")
    if not path.is_file():
        raise USSpectrumError(f"checkpoint {path} does not exist; check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable files
        if "Weights only load failed" in str(exc):
            raise USSpectrumError(
                f"checkpoint {path} contains pickled code objects, which usspectrum refuses to "
                "load (a checkpoint must not run code); re-save it as plain tensors, e.g. "
                "torch.save({'model': model.state_dict()}, path)") from None
        raise USSpectrumError(f"cannot read checkpoint {path}: the file is corrupt or not a "
                              f"PyTorch checkpoint ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise USSpectrumError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of "
                              "weights; save a state_dict or a usspectrum checkpoint")
    return obj


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                    stem: str | None = None, widths: Sequence[float] | None = None) -> nn.Module:
    """Rebuild the model stored at ``path`` (either format), in eval mode.

    ``stem`` and ``widths`` only matter for the authors' release, which does
    not record them (defaults: ImageNet stem; the 31 released widths, or the
    four switches of an S-Net)."""
    obj = read_checkpoint(path)
    if obj.get("format") == FORMAT:
        model = _from_usspectrum(obj, path)
    else:
        model = _from_release(obj, path, stem or "imagenet", widths)
    model.meta["path"] = str(path)
    model.meta["fingerprint"] = fingerprint(path)
    model.meta["num_outputs"] = num_outputs(model)
    unfinished = training_left(model.meta.get("train", {}))
    if unfinished:
        done, planned = unfinished
        warnings.warn(f"{path} is a snapshot of an unfinished training run (epoch {done} of "
                      f"{planned}): its numbers are not the trained model's", stacklevel=2)
    return model.to(device).eval()


def training_left(record: dict) -> tuple[int, int] | None:
    """(epochs done, epochs planned) when a checkpoint's training record
    says its run had epochs left, else None (finished, or no record)."""
    try:
        done, planned = int(record["epochs_done"]), int(record["recipe"]["epochs"])
    except (KeyError, TypeError, ValueError):
        return None
    return (done, planned) if done < planned else None


def num_outputs(model: nn.Module) -> int | None:
    """The number of classes ``model`` predicts (its last linear layer's outputs)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def compact_checkpoint(src: str | os.PathLike, dst: str | os.PathLike,
                       dtype: torch.dtype = torch.float16) -> Path:
    """Write a copy of usspectrum checkpoint ``src`` for shipping: without the
    optimizer state (it cannot be resumed) and with floating-point tensors
    stored as ``dtype``; :func:`load_checkpoint` restores float32."""
    obj = read_checkpoint(src)
    if obj.get("format") != FORMAT:
        raise USSpectrumError(f"{src} is not a usspectrum checkpoint; only those can be compacted")

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    obj.pop("train_state", None)
    obj["state_dict"] = {k: cast(v) for k, v in obj["state_dict"].items()}
    obj["bn_stats"] = {key: {name: tuple(cast(t) for t in pair) for name, pair in layers.items()}
                       for key, layers in obj.get("bn_stats", {}).items()}
    obj["stored_dtype"] = str(dtype).removeprefix("torch.")
    obj["checksum"] = weights_checksum(obj)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(dst, buffer.getvalue())
    return Path(dst)


def _from_usspectrum(obj: dict, path) -> nn.Module:
    if obj.get("version", 0) > VERSION:
        raise USSpectrumError(f"checkpoint {path} is format version {obj['version']}; this "
                              f"usspectrum reads up to {VERSION}: upgrade usspectrum")
    if "checksum" in obj and obj["checksum"] != weights_checksum(obj):
        raise USSpectrumError(f"checkpoint {path} is damaged: its weights do not match the "
                              "checksum saved with them; restore the file from a good copy")
    arch = obj["arch"]
    model = create_model(arch["name"], **arch.get("kwargs", {}))
    _load_state(model, obj["state_dict"], path)  # copies into the model's float32 tensors
    set_bn_stats(model, {key: {name: tuple(t.float() for t in pair)
                               for name, pair in layers.items()}
                         for key, layers in obj.get("bn_stats", {}).items()})
    model.meta = {"class_names": list(obj.get("class_names", [])),
                  "image": ImageSpec.from_dict(obj["image"]) if obj.get("image")
                  else ImageSpec.for_size(model.default_image_size),
                  "train": dict(obj.get("train", {})), "source": FORMAT}
    return model


# What the authors' release and torchvision look like, per family:
# (detecting key, US builder, S builder, default US widths, default switches)
RELEASE_FAMILIES = {
    "mobilenet_v2": ("features.18.0.weight", "us_mobilenet_v2", "s_mobilenet_v2",
                     RELEASE_V2_US_WIDTHS, V2_SWITCHES),
    "mobilenet_v1": ("features.13.body.3.weight", "us_mobilenet_v1", "s_mobilenet_v1",
                     RELEASE_US_WIDTHS, DEFAULT_SWITCHES),
    "resnet50": ("features.1.shortcut.0.weight", None, "s_resnet50", None, RESNET_SWITCHES),
    "shufflenet": ("head_0.0.weight", None, "s_shufflenet", None, SHUFFLENET_SWITCHES),
}


def _release_family(state: dict) -> str | None:
    return next((f for f, spec in RELEASE_FAMILIES.items() if spec[0] in state), None)


# AutoSlim releases share their family's keys; one tensor's shape tells them
# apart (the base network holds each layer's largest switch; MNasNet, laid
# out as MobileNet v2 is, has 5x5 depthwise convs): (builder, key, dim, size)
AUTOSLIM_SIGNATURES = {
    "mobilenet_v1": [("autoslim_mobilenet_v1", "features.0.0.weight", 0, 24)],
    "mobilenet_v2": [("autoslim_mnasnet", "features.5.body.3.weight", -1, 5),
                     ("autoslim_mobilenet_v2", "features.18.0.weight", 0, 1920)],
    "resnet50": [("autoslim_resnet50", "features.0.0.weight", 0, 48)],
}


def _autoslim_name(family: str, state: dict) -> str | None:
    for name, key, dim, size in AUTOSLIM_SIGNATURES.get(family, ()):
        if key in state and state[key].shape[dim] == size:
            return name
    return None


def _release_kwargs(family: str, state: dict) -> dict:
    """Builder arguments a release state dict implies beyond its classes:
    blocks per stage, when not the full depth. A ResNet stage starts with the
    block that has a projection; a ShuffleNet stage with the block whose
    branches give less than its output (4x its mid channels): it appends
    its pooled input."""
    if family == "resnet50":
        first_key, depth = r"^features\.(\d+)\.body\.0\.weight$", RESNET_DEPTH
        starts_stage = lambda b: f"features.{b}.shortcut.0.weight" in state  # noqa: E731
    elif family == "shufflenet":
        first_key, depth = r"^features\.(\d+)\.a_0\.0\.weight$", SHUFFLENET_DEPTH
        starts_stage = lambda b: (3 * state[f"features.{b}.c_0.0.weight"].shape[0]  # noqa: E731
                                  != 4 * state[f"features.{b}.b.1.weight"].shape[0])
    else:
        return {}
    blocks = sorted(int(m[1]) for k in state if (m := re.match(first_key, k)))
    starts = [b for b in blocks if starts_stage(b)]
    ends = starts[1:] + [blocks[-1] + 1]
    repeats = tuple(e - s for s, e in zip(starts, ends))
    return {} if repeats == depth else {"repeats": repeats}


def _from_release(obj: dict, path, stem: str, widths: Sequence[float] | None) -> nn.Module:
    state = obj.get("model", obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise USSpectrumError(f"checkpoint {path} is neither a usspectrum checkpoint nor a "
                              "state dict ({'model': state_dict} or a bare state_dict)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if is_torchvision_mobilenet_v2(state):
        return _from_torchvision_v2(state, path, stem)
    if is_torchvision_resnet(state):
        return _from_torchvision_resnet(state, path, stem)
    family = _release_family(state)
    if family is None or "classifier.0.weight" not in state:
        raise USSpectrumError(f"checkpoint {path} is not a network of the authors' release "
                              "(MobileNet v1/v2, ResNet-50, ShuffleNet) nor a torchvision mobilenet_v2 or "
                              f"resnet50 state dict (keys start with {sorted(state)[:3]})")
    _, us_name, s_name, us_widths, default_switches = RELEASE_FAMILIES[family]
    extra = _release_kwargs(family, state)
    num_classes = state["classifier.0.weight"].shape[0]
    switchable = any(re.search(r"\.bn\.\d+\.weight$", k) for k in state)
    indices = sorted({int(m["i"]) for k in state if (m := _BN_STAT.match(k))})
    # a plain BN among the slimmable ones (v2's 1280-channel conv): one set of
    # statistics for every width, as the authors' model uses it
    plain_bns = {k.removesuffix(".running_mean") for k in state
                 if k.endswith(".running_mean") and not _BN_STAT.match(k)}
    state = {k: v for k, v in state.items()
             if not (k.endswith(".num_batches_tracked") and k.removesuffix(".num_batches_tracked")
                     in plain_bns)}
    autoslim = _autoslim_name(family, state) if switchable else None
    if autoslim is not None:
        model = create_model(autoslim, num_classes=num_classes, stem=stem)
        _load_state(model, state, path)
    elif switchable:
        switches = tuple(widths) if widths else default_switches
        if len(switches) != len(indices):
            raise USSpectrumError(f"checkpoint {path} has {len(indices)} BNs per layer but "
                                  f"{len(switches)} switches were given; pass the switches")
        model = create_model(s_name, num_classes=num_classes, stem=stem, switches=switches,
                             **extra)
        _load_state(model, state, path)
    else:
        if us_name is None:
            raise USSpectrumError(f"checkpoint {path} is a {family} without switchable BNs; "
                                  "the authors released that family only as an S-Net")
        model = create_model(us_name, num_classes=num_classes, stem=stem, **extra)
        configs = ([WidthConfig(w) for w in widths] if widths else parse_width_list(us_widths))
        if indices and len(configs) != len(indices):
            raise USSpectrumError(f"checkpoint {path} stores statistics for {len(indices)} "
                                  f"widths but {len(configs)} widths were given; pass its width list")
        stats: dict[str, dict] = {str(c): {} for c in configs}
        weights = {}
        for key, value in state.items():
            m = _BN_STAT.match(key)
            if m is None:
                weights[key] = value
            elif m["field"] != "num_batches_tracked":
                layer = stats[str(configs[int(m["i"])])].setdefault(m["bn"], [None, None])
                layer[0 if m["field"] == "running_mean" else 1] = value
        if indices:
            for layers in stats.values():
                for name in plain_bns:
                    layers[name] = [state[f"{name}.running_mean"], state[f"{name}.running_var"]]
        _load_state(model, weights, path,
                    allow_missing=_us_running_buffers(model) - _buffers_of(plain_bns))
        _check_stat_shapes(model, stats, path, us_widths)
        set_bn_stats(model, {k: {n: tuple(v) for n, v in layers.items()}
                             for k, layers in stats.items() if layers})
    model.meta = {"class_names": [], "image": ImageSpec.for_size(model.default_image_size),
                  "train": {}, "source": "release"}
    return model


def is_torchvision_mobilenet_v2(state: dict) -> bool:
    """Whether ``state`` is a state dict of ``torchvision.models.mobilenet_v2``."""
    return "features.1.conv.0.0.weight" in state and "classifier.1.weight" in state


def _from_torchvision_v2(state: dict, path, stem: str) -> nn.Module:
    """torchvision's ``mobilenet_v2`` (width 1.0) as the individual baseline:
    the same layers under other names. Its blocks are ``conv.0`` (a
    conv+BN+ReLU6, the expansion or, when t = 1, the depthwise conv),
    ``conv.1`` (the depthwise conv+BN+ReLU6, or the projection when t = 1),
    then the projection conv and BN."""
    renamed = {}
    for key, value in state.items():
        if key.endswith(".num_batches_tracked"):
            continue
        m = re.match(r"^features\.(\d+)\.conv\.(\d+)(?:\.(\d+))?\.(\w+)$", key)
        if m:
            block, part, sub, field = int(m[1]), int(m[2]), m[3], m[4]
            expands = f"features.{block}.conv.3.weight" in state
            if expands:  # conv.0 expand, conv.1 depthwise -> body.0-1, 3-4; conv.2/3 -> 6/7
                index = {0: 0, 1: 3}[part] + int(sub) if sub is not None else {2: 6, 3: 7}[part]
            else:  # conv.0 depthwise -> body.0-1; conv.1/2 projection -> 3/4
                index = int(sub) if sub is not None else {1: 3, 2: 4}[part]
            renamed[f"features.{block}.body.{index}.{field}"] = value
        elif key.startswith("classifier.1."):
            renamed["classifier.0." + key.removeprefix("classifier.1.")] = value
        else:
            renamed[key] = value
    model = create_model("mobilenet_v2", num_classes=state["classifier.1.weight"].shape[0],
                         stem=stem)
    _load_state(model, renamed, path)
    # torchvision's ImageNet weights were evaluated at resize 256, crop 224
    model.meta = {"class_names": [], "image": ImageSpec.for_size(model.default_image_size),
                  "train": {}, "source": "torchvision"}
    return model


def is_torchvision_resnet(state: dict) -> bool:
    """Whether ``state`` is a state dict of a torchvision ResNet."""
    return "layer1.0.conv1.weight" in state and "fc.weight" in state


_TV_RESNET = re.compile(r"^layer(\d)\.(\d+)\.(conv|bn|downsample\.)(\d)\.(\w+)$")


def _from_torchvision_resnet(state: dict, path, stem: str) -> nn.Module:
    """torchvision's ``resnet50`` as the individual baseline: ``conv1``/``bn1``
    is the stem, ``layerL.b.conv{1,2,3}``/``bn{1,2,3}`` a block's body,
    ``downsample.{0,1}`` its projection, ``fc`` the classifier."""
    if "layer1.0.conv3.weight" not in state:
        raise USSpectrumError(f"checkpoint {path} is a torchvision ResNet with basic blocks "
                              "(resnet18/34); usspectrum has bottleneck ResNets only (resnet50)")
    blocks = sorted({(int(m[1]), int(m[2])) for k in state if (m := _TV_RESNET.match(k))})
    index = {b: i + 1 for i, b in enumerate(blocks)}
    renamed = {}
    for key, value in state.items():
        if key.endswith(".num_batches_tracked"):
            continue
        m = _TV_RESNET.match(key)
        if m:
            block = f"features.{index[int(m[1]), int(m[2])]}"
            part, n = m[3], int(m[4])
            where = (f"shortcut.{n}" if part == "downsample." else
                     f"body.{3 * (n - 1) + (0 if part == 'conv' else 1)}")
            renamed[f"{block}.{where}.{m[5]}"] = value
        elif key.startswith(("conv1.", "bn1.")):
            renamed[("features.0.0." if key.startswith("conv1.") else "features.0.1.")
                    + key.split(".", 1)[1]] = value
        elif key.startswith("fc."):
            renamed["classifier.0." + key.removeprefix("fc.")] = value
        else:
            renamed[key] = value
    repeats = tuple(sum(1 for s, _ in blocks if s == stage) for stage in range(1, 5))
    extra = {} if repeats == RESNET_DEPTH else {"repeats": repeats}
    model = create_model("resnet50", num_classes=state["fc.weight"].shape[0], stem=stem, **extra)
    _load_state(model, renamed, path)
    model.meta = {"class_names": [], "image": ImageSpec.for_size(model.default_image_size),
                  "train": {}, "source": "torchvision"}
    return model


def _buffers_of(bn_names: set[str]) -> set[str]:
    return {f"{n}.{b}" for n in bn_names for b in ("running_mean", "running_var")}


def _us_running_buffers(model: nn.Module) -> set[str]:
    return {f"{name}.{buf}" for name, m in model.named_modules() if isinstance(m, USBatchNorm2d)
            for buf in ("running_mean", "running_var")}


def _load_state(model: nn.Module, state: dict, path, allow_missing: set[str] = frozenset()) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and k not in allow_missing]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    name = model.arch["name"]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:4])}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:4])}")
        if wrong:
            parts.append(f"wrong shapes ({len(wrong)}): {', '.join(wrong[:3])}")
        raise USSpectrumError(f"checkpoint {path} does not fit {name}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=False)


def _check_stat_shapes(model: nn.Module, stats: dict, path, width_list: str) -> None:
    """Each width's statistics must have that width's channel count."""
    bn_names = [n for n, _ in slim_batchnorms(model)]
    for key, layers in stats.items():
        if not layers:
            continue
        channels = bn_channels(model, WidthConfig.parse(key))
        for name in bn_names:
            pair = layers.get(name)
            if pair is None or pair[0] is None or pair[1] is None:
                raise USSpectrumError(f"checkpoint {path} lacks BN statistics {name} at width {key}")
            if pair[0].numel() != channels[name]:
                raise USSpectrumError(
                    f"checkpoint {path}: {name} at width {key} has {pair[0].numel()} channels, "
                    f"expected {channels[name]}; its width list differs from {width_list}")


@torch.no_grad()
def bn_channels(model: nn.Module, width: WidthConfig) -> dict[str, int]:
    """Channel count each BN layer sees at ``width`` (found by a tiny forward)."""
    seen: dict[str, int] = {}
    handles = [bn.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, i[0].shape[1]))
               for name, bn in slim_batchnorms(model)]
    previous, was_training = model.width_config, model.training
    try:
        model.eval()
        model.set_width(width)
        model(torch.zeros(1, 3, 32, 32, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.set_width(previous)
        model.train(was_training)
    return seen
