"""Which predictions differ between the sweep's dense path and per-forward
slicing, and which of the two float64 agrees with.

Both paths are calibrated as the sweep calibrates them (2,000 seeded train
images, 31 widths), then every validation image runs at every width through
both. For each image whose top-1 differs it prints the sliced path's gap
between its top two logits and the float64 answer (the sliced model in
float64, calibrated in float64 on the same images).

    python benchmarks/compare_predictions.py --checkpoint examples/results/us-full.pt

Not a test: it prints what it finds.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from usspectrum.runtime.allocator import keep_freed_memory
from usspectrum.spectrum.calibration import Calibrator, calibrate
from usspectrum.io.checkpoint import load_checkpoint
from usspectrum.io.data import eval_transform, make_loader, open_split, seeded_subset
from usspectrum.nn.folding import to_dense
from usspectrum.nn.width import parse_width_list

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


def top_gap(logits: torch.Tensor) -> float:
    top = logits.topk(2).values
    return float(top[0] - top[1])


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--widths", default="0.25:1.0:0.025")
    parser.add_argument("--eval-images", type=int, default=None)
    parser.add_argument("--calib-images", type=int, default=2000)
    args = parser.parse_args()
    keep_freed_memory()
    dense_model = load_checkpoint(args.checkpoint).eval()
    sliced_model = load_checkpoint(args.checkpoint).eval()
    widths = parse_width_list(args.widths)
    transform = eval_transform(dense_model.meta["image"])
    calib = seeded_subset(open_split(args.data, "train", transform), args.calib_images, 0, "calib")
    val = seeded_subset(open_split(args.data, "val", transform), args.eval_images, 0, "eval")
    calibrate(dense_model, make_loader(calib, 200), widths, dense=True)
    calibrate(sliced_model, make_loader(calib, 200), widths, dense=False)
    nets = {str(w): to_dense(dense_model, w, fuse_activations=True) for w in widths}

    flips, largest = [], 0.0
    for batch, (images, _) in enumerate(make_loader(val, 200)):
        for width in widths:
            dense = nets[str(width)](images)
            sliced_model.set_width(width)
            sliced = sliced_model(images)
            largest = max(largest, float((dense - sliced).abs().max()))
            for i in (dense.argmax(1) != sliced.argmax(1)).nonzero().flatten().tolist():
                flips.append((width, batch * 200 + i, images[i].clone(), int(dense[i].argmax()),
                              int(sliced[i].argmax()), top_gap(sliced[i])))
    print(f"{len(val)} images x {len(widths)} widths; largest |logit difference| {largest:.3g}; "
          f"top-1 differs for {len(flips)} predictions")
    if not flips:
        return
    exact = load_checkpoint(args.checkpoint).eval().double()
    with Calibrator(exact, sorted({str(f[0]) for f in flips})) as cal:
        for images, _ in make_loader(calib, 200):
            cal.update(images.double())
    for width, index, image, dense_class, sliced_class, gap in flips:
        exact.set_width(width)
        logits = exact(image.double()[None])[0]
        print(f"width {width} image {index}: dense {dense_class}, sliced {sliced_class} "
              f"(top-two gap {gap:.3g}); float64 {int(logits.argmax())} (gap {top_gap(logits):.3g})")


if __name__ == "__main__":
    main()
