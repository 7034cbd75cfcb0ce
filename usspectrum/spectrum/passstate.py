"""Progress of an unfinished pass over the data, kept beside the results CSV.

A pass calibrates and evaluates many widths at once, so its rows only exist
when it ends. So that an interruption loses minutes rather than the pass,
the calibrated statistics (once calibration is done) and the running
correct-counts (every ``save_every`` seconds of evaluation) are written to
``<csv>.partial.pt``; a rerun with the same settings picks up from there.
The file holds tensors, numbers and strings only and is read with
``weights_only=True``.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .evaluate import Accuracy
from ..io.identity import differences
from ..io.results import atomic_write_bytes


def state_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial.pt")


@dataclass
class PassState:
    """What a pass has done so far; ``signature`` says which pass it is."""

    signature: dict
    calibrated: bool = False
    bn_stats: dict = field(default_factory=dict)
    calib_images: int = 0
    batches: int = 0
    counts: dict[str, Accuracy] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # "calib:<w>", "eval:<w>", "load"

    def add_seconds(self, key: str, value: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + value

    def save(self, path: Path) -> None:
        payload = {
            "signature": self.signature, "calibrated": self.calibrated,
            "bn_stats": self.bn_stats, "calib_images": self.calib_images,
            "batches": self.batches, "seconds": self.seconds,
            "counts": {k: [a.top1_correct, a.top5_correct, a.images] for k, a in self.counts.items()},
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path, signature: dict) -> "PassState | None":
        """The saved state of the pass ``signature`` names, else None (a
        missing, unreadable or other pass's file is ignored)."""
        if not path.exists():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a torn or foreign file: start the pass afresh
            return None
        if not isinstance(payload, dict) or differences(signature,
                                                        payload.get("signature") or {}):
            return None
        counts = {k: Accuracy(*map(int, v)) for k, v in payload["counts"].items()}
        return cls(signature, bool(payload["calibrated"]), payload["bn_stats"],
                   int(payload["calib_images"]), int(payload["batches"]), counts,
                   dict(payload["seconds"]))
