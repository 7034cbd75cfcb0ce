"""What sharing prefixes (usspectrum.spectrum.prefix_tree) buys one greedy-search step.

One step of the layer-granularity search on a checkpoint (default: the
shipped CIFAR-10 nonuniform US-Net) at a given config: every candidate
(one per slot, slimmed by --step) BN-calibrated on --calib-images and
evaluated on --search-images random images (the cost does not depend on
the pixels), measured alternately
  - separately: DenseCalibrator + one dense copy per candidate, each over
    every batch (what the search did before), and
  - shared: DenseCalibrator(base=...) + evaluate(shares=...) (the current config
    runs once, each candidate from its first changed conv on).
Prints the median seconds of each and their ratio.

    python benchmarks/bench_search_step.py [--rounds 2] [--width 1.0]

Not a test: it prints measured numbers.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from usspectrum.runtime.allocator import keep_freed_memory
from usspectrum.spectrum.calibration import DenseCalibrator
from usspectrum.io.checkpoint import load_checkpoint
from usspectrum.nn.folding import to_dense
from usspectrum.spectrum.evaluate import evaluate_nets
from usspectrum.spectrum.search import search_groups, slim_group
from usspectrum.nn.layers import slim_batchnorms
from usspectrum.spectrum.evaluate import evaluate
from usspectrum.nn.width import WidthConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="examples/results/cifar10/models/us-nonuniform.pt")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--step", type=float, default=0.05)
    parser.add_argument("--granularity", default="layer", choices=["layer", "stage"])
    parser.add_argument("--calib-images", type=int, default=1000)
    parser.add_argument("--search-images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    keep_freed_memory()
    model = load_checkpoint(args.checkpoint).eval()
    lo, _ = model.width_range
    ratios = [args.width] * len(model.slots)
    base = WidthConfig.per_layer(ratios)
    configs = [WidthConfig.per_layer(r) for r in
               (slim_group(model, ratios, idx, args.step, lo)
                for _, idx in search_groups(model, args.granularity)) if r is not None]
    size = model.meta["image"].image_size
    torch.manual_seed(0)
    calib = [torch.randn(200, 3, size, size) for _ in range(args.calib_images // 200)]
    held = [(torch.randn(200, 3, size, size), torch.randint(0, 10, (200,)))
            for _ in range(args.search_images // 200)]

    def clear():
        for _, bn in slim_batchnorms(model):
            bn.calibrated.clear()

    def separately():
        with DenseCalibrator(model, configs) as cal:
            for x in calib:
                cal.update(x)
        evaluate_nets({str(c): to_dense(model, c, fuse_activations=True) for c in configs}, held)
        clear()

    def shared():
        with DenseCalibrator(model, configs, base=base) as cal:
            for x in calib:
                cal.update(x)
        evaluate(model, held, [base, *configs], shares=base)
        clear()

    times = {"separately": [], "shared": []}
    for _ in range(args.rounds):
        for name, run in (("separately", separately), ("shared", shared)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    sep, sha = (statistics.median(times[k]) for k in ("separately", "shared"))
    print(f"{args.granularity} step at width {args.width}: {len(configs)} candidates, "
          f"{args.calib_images} calibration + {args.search_images} search images, "
          f"{args.rounds} rounds, torch threads {torch.get_num_threads()}")
    print(f"separately: {sep:.2f} s   shared prefixes (+ the current config): {sha:.2f} s   "
          f"ratio {sep / sha:.2f}x")


if __name__ == "__main__":
    main()
