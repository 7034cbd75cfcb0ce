"""Measure why two of the paper's claims do not carry over to CIFAR-10.

Reads the models of a CIFAR-10 reproduction (``examples/reproduce_cifar10.py``)
and writes OUT/why.csv (what was measured, on which model, the value) and
OUT/why-stages.csv (a sweep). Two claims are probed:

* "Output averaging helps" (Table 1). Every conv the averaging scales is
  followed by a BatchNorm, which in training normalises by the batch's own
  statistics, so a constant factor on a conv's output cancels except inside
  BN's epsilon. Measured: on one batch of training images, in training mode
  at each of Table 1's widths, the averaged model's logits and gradients
  with the averaging on and off. If they agree to float precision the two
  Table 1 models trained the same function, and their gap is the spread
  between two training runs; the per-epoch logs give its size and sign.
* "Slimming stage 5 is worst" (Figure 1). Measured: top-1 at width 1.0 with
  one stage alone cut to the smallest trained ratio (0.25), stage by stage,
  and how many principal components hold 90% and 99% of the variance of the
  1024 features stage 5 hands to the 10-way classifier.

    python examples/why_claims_cifar10.py --out examples/results/cifar10
    python examples/why_claims_cifar10.py --out examples/results/cifar10 --models DIR/epoch20
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from usspectrum import SweepSettings, sweep
from usspectrum.io.checkpoint import load_checkpoint
from usspectrum.io.data import eval_transform, make_loader, open_split, seeded_subset
from usspectrum.io.results import write_table
from usspectrum.nn.layers import SlimConv2d
from usspectrum.spectrum.calibrate import prepare_width

ROOT = Path(__file__).resolve().parents[1]
TABLE1_WIDTHS = (0.25, 0.5, 0.75, 1.0)


def averaging_probe(path: Path, data: str, images: int = 256, seed: int = 0) -> list[dict]:
    """Relative differences of logits and of the loss gradient, averaging on
    against off, BN in training mode (as the model trained) at each width."""
    model = load_checkpoint(path)
    convs = [m for m in model.modules() if isinstance(m, SlimConv2d) and m.average_output]
    if not convs:
        raise SystemExit(f"{path} was not trained with output averaging")
    train = seeded_subset(open_split(data, "train", eval_transform(model.meta["image"])),
                          images, seed, "images")
    x, y = next(iter(make_loader(train, images, 0)))
    model.train()
    rows = []
    for width in TABLE1_WIDTHS:
        model.set_width(width)
        outputs = {}
        for averaged in (True, False):
            for conv in convs:
                conv.average_output = averaged
            model.zero_grad()
            logits = model(x)
            F.cross_entropy(logits, y).backward()
            grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            outputs[averaged] = (logits.detach(), grad)
        (l_on, g_on), (l_off, g_off) = outputs[True], outputs[False]
        rows += [
            {"claim": "output averaging", "model": path.stem, "width": width,
             "measure": "max |logit on - off| / max |logit| (BN in training mode)",
             "value": float((l_on - l_off).abs().max() / l_on.abs().max())},
            {"claim": "output averaging", "model": path.stem, "width": width,
             "measure": "|grad on - off| / |grad| (same batch)",
             "value": float((g_on - g_off).norm() / g_on.norm())},
            {"claim": "output averaging", "model": path.stem, "width": width,
             "measure": "share of predictions that agree",
             "value": float((l_on.argmax(1) == l_off.argmax(1)).float().mean())},
        ]
    for conv in convs:
        conv.average_output = True
    return rows


def run_to_run_spread(out: Path) -> list[dict]:
    """Averaged minus plain top-1 in the per-epoch logs (2,000 val images):
    how often the sign flips, and how large the gap gets, at 0.25 and 1.0."""
    plain = pd.read_csv(out / "us-uniform-log.csv").set_index("epoch")
    averaged = pd.read_csv(out / "us-uniform-avg-log.csv").set_index("epoch")
    epochs = plain.index.intersection(averaged.index)
    rows = []
    for column, width in (("top1_smallest", "0.25"), ("top1_largest", "1.0")):
        gap = averaged.loc[epochs, column] - plain.loc[epochs, column]
        n = len(epochs)
        for measure, value in ((f"epochs the averaged model is ahead (of {n})", int((gap > 0).sum())),
                               (f"epochs it is behind (of {n})", int((gap < 0).sum())),
                               ("mean |averaged - plain| top-1, points", float(gap.abs().mean())),
                               ("largest |averaged - plain| top-1, points",
                                float(gap.abs().max()))):
            rows.append({"claim": "output averaging", "model": "per-epoch logs",
                         "width": width, "measure": measure, "value": value})
    return rows


def stage_probe(path: Path, data: str, out: Path, settings: SweepSettings) -> list[dict]:
    """Top-1 at 1.0 with one stage alone at ratio 0.25, for every stage."""
    model = load_checkpoint(path)
    widths = ["1.0"] + [f"1.0@s{k}x0.25" for k in range(1, model.num_stages + 1)]
    df = sweep(path, data, widths, out / "why-stages.csv", settings)
    full = float(df.loc[df["width"] == "1.0", "top1"].iloc[0])
    rows = []
    for _, r in df[df["width"] != "1.0"].iterrows():
        stage = r["width"].split("@s")[1].split("x")[0]
        rows.append({"claim": "stage 5 worst", "model": path.stem, "width": r["width"],
                     "measure": f"top-1 lost with stage {stage} alone at x0.25 "
                                f"({r['mflops']:.2f} MFLOPs)",
                     "value": round(full - float(r["top1"]), 2)})
    return rows


def feature_spectrum(path: Path, data: str, images: int = 2000, seed: int = 0) -> list[dict]:
    """Principal components of the pooled last-stage features at 1.0 (val
    images, BN calibrated on 2,000 training images)."""
    model, _ = prepare_width(path, 1.0, data, calib_images=2000, seed=seed)
    model.eval().set_width(1.0)
    val = seeded_subset(open_split(data, "val", eval_transform(model.meta["image"])),
                        images, seed, "images")
    features = []
    hook = model.pool.register_forward_hook(lambda m, i, o: features.append(o.flatten(1)))
    with torch.no_grad():
        for x, _ in make_loader(val, 200, 0):
            model(x)
    hook.remove()
    f = torch.cat(features).double()
    var = torch.linalg.eigvalsh(torch.cov(f.T)).flip(0).clamp(min=0)
    share = (var.cumsum(0) / var.sum()).numpy()
    classes = model.num_classes
    base = {"claim": "stage 5 worst", "model": path.stem, "width": "1.0"}
    return [
        {**base, "measure": f"pooled stage-5 features (of {f.shape[1]})", "value": f.shape[1]},
        {**base, "measure": f"variance share of the first {classes - 1} principal components",
         "value": round(float(share[classes - 2]), 4)},
        {**base, "measure": "principal components for 90% of the variance",
         "value": int(np.searchsorted(share, 0.90) + 1)},
        {**base, "measure": "principal components for 99% of the variance",
         "value": int(np.searchsorted(share, 0.99) + 1)},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.relpath(ROOT / "examples" / "results" / "cifar10"))
    parser.add_argument("--models", default=None, help="folder of the checkpoints (default: OUT/models)")
    parser.add_argument("--data", default=os.path.relpath(ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--eval-images", type=int, default=None, help="default: all of val/")
    args = parser.parse_args()
    out = Path(args.out)
    models = Path(args.models) if args.models else out / "models"
    torch.manual_seed(0)
    settings = SweepSettings(calib_images=2000, eval_images=args.eval_images,
                             calibration="always", progress=False)
    rows = averaging_probe(models / "us-uniform-avg.pt", args.data)
    rows += run_to_run_spread(out)
    rows += stage_probe(models / "us-nonuniform.pt", args.data, out, settings)
    rows += feature_spectrum(models / "us-nonuniform.pt", args.data)
    table = pd.DataFrame(rows)
    write_table(table, out / "why.csv")
    with pd.option_context("display.max_colwidth", 80, "display.width", 200):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
