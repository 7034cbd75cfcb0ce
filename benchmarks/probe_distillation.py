"""Short training probes of the US recipe: how the small widths' loss
(inplace distillation, labels, or a mix) affects early training.

One-block-per-stage US-MobileNet v1 (CIFAR stem), seeded CIFAR-10 training
subset, batch 64, lr 0.03 cosine, half an epoch of warm-up, weight decay
5e-5; prints the full width's training loss per epoch and top-1 at 0.25 /
1.0 on 500 val images (BN calibrated on 500 training images).

    python benchmarks/probe_distillation.py                 # every probe
    python benchmarks/probe_distillation.py "4 ep: mixed 0.5" "4 ep: distillation"
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import usspectrum

ROOT = Path(__file__).resolve().parents[1]
PURE = dict(kind="us", distill_weight=1.0)
PROBES = {  # name: (epochs, training images, TrainConfig fields)
    "individual": (2, 4000, dict(kind="individual")),
    "distillation": (2, 4000, PURE),
    "labels only": (2, 4000, dict(kind="us", inplace_distill=False)),
    "distillation, ramp 0.5 epoch": (2, 4000, dict(PURE, distill_ramp=0.5)),
    "distillation, ramp 1 epoch": (2, 4000, dict(PURE, distill_ramp=1.0)),
    "nonuniform, distillation": (2, 4000, dict(PURE, nonuniform=True)),
    "nonuniform, distillation, ramp 0.5": (2, 4000, dict(PURE, nonuniform=True, distill_ramp=0.5)),
    "distillation, label smoothing 0.1": (2, 4000, dict(PURE, label_smoothing=0.1)),
    "ramp 0.5, label smoothing 0.1": (2, 4000, dict(PURE, distill_ramp=0.5, label_smoothing=0.1)),
    "labels only, label smoothing 0.1": (2, 4000, dict(kind="us", inplace_distill=False,
                                                       label_smoothing=0.1)),
    "distillation, lr 0.01": (2, 4000, dict(PURE, lr=0.01)),
    "4 ep: labels only": (4, 8000, dict(kind="us", inplace_distill=False)),
    "4 ep: distillation": (4, 8000, PURE),
    "4 ep: mixed 0.5": (4, 8000, dict(kind="us", distill_weight=0.5)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probes", nargs="*", help=f"default: all of {list(PROBES)}")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.probes or PROBES:
            epochs, images, fields = PROBES[name]
            fields = dict(fields)
            started = time.perf_counter()
            result = usspectrum.train(
                data=args.data, out=str(Path(tmp) / "probe.pt"), epochs=epochs, batch_size=64,
                lr=fields.pop("lr", 0.03), warmup_epochs=0.5, weight_decay=5e-5,
                repeats=(1, 1, 1, 1, 1), train_images=images, val_images=500, calib_images=500,
                progress=False, **fields)
            log = result.log
            losses = ", ".join(f"{v:.2f}" for v in log["loss"])
            print(f"{name:36s} loss {losses:24s} top-1 {log['top1_smallest'].iloc[-1]:.1f} / "
                  f"{log['top1_largest'].iloc[-1]:.1f}  ({time.perf_counter() - started:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    main()
