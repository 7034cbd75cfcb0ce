"""One width as a standalone file that plain PyTorch can load.

``export`` (the default) writes a ``torch.export`` program (``.pt2``, load
with ``torch.export.load(path).module()``), with a dynamic batch dimension;
``torchscript`` writes a traced TorchScript module (``torch.jit.load``).
Both carry ``usspectrum.json`` (width, channels, classes, preprocessing) as
an extra file and need nothing from usspectrum to run.
"""
from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..nn.folding import FoldedNet, to_dense
from ..errors import UsageError
from .results import atomic_write_bytes
from ..nn.width import WidthConfig, WidthLike

FORMATS = ("export", "torchscript")
META_FILE = "usspectrum.json"


def export_metadata(model: nn.Module, net: FoldedNet) -> dict:
    """What a user of the exported file needs to feed it."""
    meta = getattr(model, "meta", {}) or {}
    spec = meta.get("image")
    return {"arch": getattr(model, "arch", {}).get("name", type(model).__name__),
            "kind": getattr(model, "kind", ""), "width": net.width,
            "channels": [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)],
            "class_names": list(meta.get("class_names") or []),
            "image": spec.to_dict() if spec is not None else None,
            "fingerprint": meta.get("fingerprint", "")}


def export_width(model: nn.Module, width: WidthLike, out: str | os.PathLike,
                 fmt: str = "export", image_size: int | None = None) -> dict:
    """Write ``model`` at ``width`` as a dense BN-folded network to ``out``;
    returns the metadata stored with it."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    config = WidthConfig.coerce(width)
    config.channels(model.slots)  # checks stage indices and per-layer lengths early
    net = to_dense(model, config).cpu().eval()
    meta = export_metadata(model, net)
    spec = (getattr(model, "meta", {}) or {}).get("image")
    size = image_size or (spec.image_size if spec is not None else model.default_image_size)
    example = torch.randn(2, 3, size, size)
    buffer = io.BytesIO()
    extra = {META_FILE: json.dumps(meta)}
    with warnings.catch_warnings():
        # deprecation notes from torch.jit and storage-grouping notes from
        # torch.export say nothing actionable about this model
        warnings.simplefilter("ignore")
        with torch.no_grad():
            if fmt == "torchscript":
                torch.jit.save(torch.jit.trace(net, example), buffer, _extra_files=extra)
            else:
                batch = torch.export.Dim("batch", min=1, max=65536)
                program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
                torch.export.save(program, buffer, extra_files=extra)
    atomic_write_bytes(Path(out), buffer.getvalue())
    return meta
