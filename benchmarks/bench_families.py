"""A 31-width CIFAR-10 sweep of US-MobileNet v1 next to US-MobileNet v2.

Both CIFAR-stem US-Nets (full depth, untrained weights with BN statistics
calibrated per width: the sweep's work does not depend on the weights) are
swept at the same 31 widths 0.25:1.0:0.025 (below 0.35 v2 runs outside its
trained range; allowed here, timing only), with 2,000 calibration and
10,000 validation images, one after the other in alternating order. Prints
the wall time of each and their ratio, and MFLOPs at 1.0.

    python benchmarks/bench_families.py                   # ~15 min on 2 cores
    python benchmarks/bench_families.py --eval-images 2000 --rounds 1

Not a test: it prints measured numbers.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import usspectrum
from usspectrum.io.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10"
WIDTHS = "0.25:1.0:0.025"
MODELS = ("us_mobilenet_v1", "us_mobilenet_v2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--eval-images", type=int, default=None, help="[default: all 10,000]")
    parser.add_argument("--calib-images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    names = sorted(p.name for p in (Path(args.data) / "train").iterdir())
    times: dict[str, list[float]] = {m: [] for m in MODELS}
    flops = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            model = usspectrum.create_model(name, stem="cifar", num_classes=len(names))
            save_checkpoint(model, Path(tmp) / f"{name}.pt", class_names=names)
            flops[name] = usspectrum.count_flops(model, 1.0).mflops
        for r in range(args.rounds):
            order = MODELS if r % 2 == 0 else MODELS[::-1]
            for name in order:
                out = Path(tmp) / f"{name}-{r}.csv"
                start = time.perf_counter()
                df = usspectrum.sweep(Path(tmp) / f"{name}.pt", args.data, WIDTHS, out,
                                      calib_images=args.calib_images,
                                      eval_images=args.eval_images, allow_extrapolate=True,
                                      progress=False)
                times[name].append(time.perf_counter() - start)
                assert len(df) == 31
                print(f"round {r + 1} {name}: {times[name][-1]:.1f} s", flush=True)
    print(f"\n31-width sweep, {args.calib_images} calibration images, "
          f"{args.eval_images or 10000} validation images (median of {args.rounds})")
    for name in MODELS:
        print(f"{name:18s} {statistics.median(times[name]):8.1f} s   "
              f"{flops[name]:.2f} MFLOPs at 1.0")
    ratio = statistics.median(times[MODELS[1]]) / statistics.median(times[MODELS[0]])
    print(f"v2 / v1 wall time: {ratio:.2f}x; MFLOPs ratio at 1.0: "
          f"{flops[MODELS[1]] / flops[MODELS[0]]:.2f}x")


if __name__ == "__main__":
    main()
