"""How repeatable a seeded run is: the demo's individual net trained
several times, at 2 threads (twice) and at 1 thread, then BN-calibrated and
evaluated at 0.25 / 0.5 / 1.0 like the demo does.

Same machine, same torch build and thread count: the runs should agree to
the last digit. Another thread count (or another CPU, another oneDNN/MKL
kernel) sums floats in another order, and training amplifies those last-bit
differences: this prints how far apart the results land.

    python benchmarks/seed_spread.py
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch

import usspectrum
from usspectrum.demo import demo_recipe
from usspectrum.spectrum.sweep import SweepSettings

WIDTHS = "0.25,0.5,1.0"


def main() -> None:
    settings = SweepSettings(calib_images=600, batch_size=150, progress=False, workers=0,
                             calibration="always", allow_extrapolate=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tag, threads in (("2 threads, run 1", 2), ("2 threads, run 2", 2),
                             ("1 thread", 1)):
            out = Path(tmp) / tag.replace(" ", "_").replace(",", "")
            out.mkdir()
            config = dataclasses.replace(demo_recipe("individual", out / "m.pt", 15, False),
                                         threads=threads)
            log = usspectrum.train(config).log
            torch.set_num_threads(threads)
            df = usspectrum.sweep(out / "m.pt", "digits", WIDTHS, None, settings)
            rows.append((tag, float(log["loss"].iloc[-1]), list(df["top1"])))
    print(f"{'run':18s} {'last loss':>10s}  top-1 at {WIDTHS}")
    for tag, loss, top1 in rows:
        print(f"{tag:18s} {loss:10.5f}  " + " / ".join(f"{t:.2f}" for t in top1))
    same = rows[0][1:] == rows[1][1:]
    spread = [max(r[2][i] for r in rows) - min(r[2][i] for r in rows) for i in range(3)]
    print(f"two 2-thread runs identical: {same}; largest top-1 spread over all runs: "
          + " / ".join(f"{s:.2f}" for s in spread) + " points")


if __name__ == "__main__":
    main()
