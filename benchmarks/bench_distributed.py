"""1-process vs 2-process (torchrun, Gloo) sweep wall time on this machine.

    python benchmarks/bench_distributed.py [--eval-images 2000] [--nproc 2]

Both runs use one thread per process (OMP_NUM_THREADS=1), so the 2-process
run uses twice the cores; on a 2-core machine expect little gain. Prints the
wall times, the ratio and whether the top-1/top-5 columns are identical.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import usspectrum
from usspectrum.io.checkpoint import save_checkpoint

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--calib-images", type=int, default=1000)
    parser.add_argument("--widths", default="0.25:1.0:0.075")
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    data = Path(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        names = sorted(p.name for p in (data / "train").iterdir())
        model = usspectrum.create_model("us_mobilenet_v1", stem="cifar", num_classes=10)
        save_checkpoint(model, Path(tmp) / "m.pt", class_names=names)
        common = ["-m", "usspectrum", "sweep", "m.pt", "--data", str(data), "--widths", args.widths,
                  "--eval-images", str(args.eval_images), "--calib-images", str(args.calib_images),
                  "--quiet", "--no-plot", "--workers", "0"]
        runs = {"1 process": [sys.executable, *common, "-o", "one.csv"],
                f"{args.nproc} processes": [sys.executable, "-m", "torch.distributed.run",
                                            "--standalone", "--nproc_per_node", str(args.nproc),
                                            *common, "-o", "two.csv"]}
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        walls = {}
        for name, cmd in runs.items():
            start = time.perf_counter()
            subprocess.run(cmd, cwd=tmp, env=env, check=True, capture_output=True)
            walls[name] = time.perf_counter() - start
            print(f"{name:<12} {walls[name]:8.1f} s", flush=True)
        a = pd.read_csv(Path(tmp) / "one.csv")
        b = pd.read_csv(Path(tmp) / "two.csv")
        same = a.top1.tolist() == b.top1.tolist() and a.top5.tolist() == b.top5.tolist()
        one, two = walls.values()
        print(f"machine: {os.cpu_count()} cores; {len(a)} widths, {args.eval_images} eval + "
              f"{args.calib_images} calibration images; speed-up {one / two:.2f}x; "
              f"top-1/top-5 identical: {same}")


if __name__ == "__main__":
    main()
