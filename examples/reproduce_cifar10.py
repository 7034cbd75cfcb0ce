"""Reproduce the seed's Figures 1 and 2 on CIFAR-10 with the CIFAR stem.

Trains a nonuniform US-MobileNet v1, a 4-switch S-MobileNet v1 and an
individual MobileNet v1, then

* compares their spectra at the same widths after BN calibration
  (Figure 2)  -> OUT/compare.csv, OUT/compare.png/.svg
* slims stages 1, 4 and 5 of the US-Net by 0.6 on top of the global width
  (Figure 1)  -> OUT/slim-stage.csv, OUT/slim-stage.png/.svg

Every step resumes: rerun the same command after an interruption.

    python examples/reproduce_cifar10.py                       # ../shared/data/cifar10
    python examples/reproduce_cifar10.py --data /path/to/imagefolder --out results

The defaults were chosen to fit a little over an hour on 2 CPU cores: the
shallow one-block-per-stage MobileNet v1 (``repeats=(1,1,1,1,1)``, same
widths and stages as the paper's network) on 32x32 inputs, trained for a few
epochs on a 25,000-image subset. Pass ``--repeats 1 2 2 6 2`` for the
paper's depth and more ``--epochs`` on a faster machine.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from usspectrum import SweepSettings, TrainConfig, train
from usspectrum.compare import compare, slim_stage

ROOT = Path(__file__).resolve().parents[1]
KINDS = (("us", "us-nonuniform"), ("slimmable", "s-net-4switch"), ("individual", "individual"))


def main() -> None:
    parser = argparse.ArgumentParser(description="Figures 1 and 2 of the US-Nets supplementary on CIFAR-10")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--out", default=str(ROOT / "examples" / "results"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-images", type=int, default=25000)
    parser.add_argument("--repeats", type=int, nargs=5, default=(1, 1, 1, 1, 1))
    parser.add_argument("--eval-images", type=int, default=5000)
    parser.add_argument("--calib-images", type=int, default=2000)
    parser.add_argument("--widths", default="0.25:1.0:0.05")
    parser.add_argument("--stage-widths", default="0.25:1.0:0.125")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    paths = {}
    for kind, name in KINDS:
        path = out / f"{name}.pt"
        t0 = time.perf_counter()
        train(TrainConfig(kind=kind, data=args.data, out=str(path), epochs=args.epochs,
                          batch_size=64, lr=0.03, weight_decay=5e-5, warmup_epochs=0.5,
                          repeats=tuple(args.repeats), nonuniform=kind == "us",
                          train_images=args.train_images, val_images=1000,
                          calib_images=1000, eval_every=args.epochs, device=args.device,
                          resume=path.exists()))
        print(f"trained {name} in {time.perf_counter() - t0:.0f} s")
        paths[kind] = path

    settings = SweepSettings(calib_images=args.calib_images, eval_images=args.eval_images,
                             widths_per_pass=8, device=args.device)
    t0 = time.perf_counter()
    figure2 = compare(list(paths.values()), args.data, args.widths, out, settings)
    figure1 = slim_stage(paths["us"], args.data, [1, 4, 5], 0.6, args.stage_widths,
                         out / "slim-stage.csv", settings)
    print(f"sweeps took {time.perf_counter() - t0:.0f} s; total {time.perf_counter() - started:.0f} s")
    print(figure2.pivot(index="width", columns="model", values="top1").to_string())
    print(figure1[["width", "mflops", "top1"]].to_string(index=False))


if __name__ == "__main__":
    main()
