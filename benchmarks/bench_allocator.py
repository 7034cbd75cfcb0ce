"""What keeping freed memory for reuse (usspectrum.runtime.allocator) buys.

Runs the same work in child processes, alternately with glibc's default
malloc settings (USSPECTRUM_KEEP_MEMORY=0) and with usspectrum's, and
prints the median time of each and the ratio:
  - one BN-calibration forward (dense copy, BN in training mode, batch 200),
  - one evaluation forward of the BN-folded dense copy (batch 200),
at widths 0.25 / 0.5 / 0.75 / 1.0 of the CIFAR-stem US-MobileNet v1.

    python benchmarks/bench_allocator.py [--rounds 3]

Not a test: it prints measured numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

WIDTHS = (0.25, 0.5, 0.75, 1.0)


def worker(repeats: int) -> None:
    from usspectrum.runtime.allocator import keep_freed_memory

    kept = keep_freed_memory()
    import torch

    import usspectrum
    from usspectrum.spectrum.calibration import BatchStats, DenseCalibrator
    from usspectrum.nn.folding import to_dense

    torch.manual_seed(0)
    model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=10).eval()
    x = torch.randn(200, 3, 32, 32)
    out = {"kept": kept}
    with torch.no_grad():
        for width in WIDTHS:
            with DenseCalibrator(model, [width]) as cal:
                calib = next(iter(cal.nets.values()))
                cal.update(x)  # probe and warm-up
                calib_s = _median(lambda: calib(x), repeats)
            assert any(isinstance(m, BatchStats) for m in calib.modules())
            dense = to_dense(model, width)
            eval_s = _median(lambda: dense(x), repeats)
            out[str(width)] = {"calib": calib_s, "eval": eval_s}
    print(json.dumps(out))


def _median(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="child processes per setting")
    parser.add_argument("--repeats", type=int, default=7, help="timed forwards per child")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.repeats)
        return
    results = {"default": [], "kept": []}
    for _ in range(args.rounds):  # alternate, so drifts hit both settings
        for name, flag in (("default", "0"), ("kept", "1")):
            env = dict(os.environ, USSPECTRUM_KEEP_MEMORY=flag)
            done = subprocess.run([sys.executable, __file__, "--worker", "--repeats", str(args.repeats)],
                                  env=env, check=True, capture_output=True, text=True)
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"settings applied: default {results['default'][0]['kept']}, kept {results['kept'][0]['kept']}")
    print(f"{'width':>6} {'calib ms':>9} {'(kept)':>8} {'speed-up':>8}   {'eval ms':>8} {'(kept)':>8} "
          f"{'speed-up':>8}")
    for width in WIDTHS:
        med = {name: {part: 1000 * statistics.median(r[str(width)][part] for r in runs)
                      for part in ("calib", "eval")} for name, runs in results.items()}
        d, k = med["default"], med["kept"]
        print(f"{width:>6} {d['calib']:>9.1f} {k['calib']:>8.1f} {d['calib'] / k['calib']:>7.2f}x   "
              f"{d['eval']:>8.1f} {k['eval']:>8.1f} {d['eval'] / k['eval']:>7.2f}x")


if __name__ == "__main__":
    main()
