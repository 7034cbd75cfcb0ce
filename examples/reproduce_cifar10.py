"""Reproduce the seed's Figures 1 and 2 and Table 1 on CIFAR-10.

Trains, with one recipe and the same number of epochs, full-depth
MobileNet v1s (CIFAR stem, 32x32) on the whole 50,000-image training split:

* ``us-uniform``      US-Net, uniform sandwich widths (Figure 2, Table 1)
* ``us-nonuniform``   US-Net, per-layer sandwich widths (Figure 1)
* ``s-net-4switch``   slimmable net at 0.25/0.5/0.75/1.0 (Figure 2)
* ``individual``      plain net at 1.0, sliced below it (Figure 2)
* ``us-uniform-avg``  uniform US-Net with output averaging (Table 1)

``us-uniform-avg`` trains ``--table1-epochs`` epochs (default 2 of the
run's 3) and Table 1 compares it with the uniform US-Net's snapshot at the same
epoch, so both columns of Table 1 have the same training. Every model is
snapshotted at that epoch (OUT/epoch<N>/<name>.pt), and the US-Net, S-Net and
individual snapshots are also evaluated at the four switches: a spectrum
half-way along the learning curve.

The models train round-robin, one epoch each in turn, so every model's
per-epoch log (``<name>-log.csv``: loss, top-1 at the smallest and largest
width) grows together and an interrupted run loses at most one epoch of one
model. Then, every width BN-calibrated on 2,000 training images and
evaluated on all 10,000 validation images:

* Figure 2 -> OUT/compare.csv, compare.png/.svg (0.25:1.0:0.05)
* Figure 1 -> OUT/slim-stage.csv, slim-stage.png/.svg (x0.6 on each stage)
* Table 1  -> OUT/table1.csv (top-1 error at 0.25/0.5/0.75/1.0)
* OUT/epoch<N>/compare.csv: the snapshots at the four switches
* OUT/precision-check.csv: top-1 of the float32 and the shipped float16 US-Net

The training checkpoints (OUT/<name>.pt, float32 with optimizer state) stay
out of git; the figures are made from compact copies in OUT/models/ (float16
on disk, float32 once loaded), which are what the repository ships.

Rerunning the same command continues every model from its last finished
epoch and every sweep from its last finished pass.

    python examples/reproduce_cifar10.py                  # ../shared/data/cifar10
    python examples/reproduce_cifar10.py --epochs 12 --out results
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from usspectrum import SweepSettings, TrainConfig, sweep, train
from usspectrum.checkpoint import compact_checkpoint
from usspectrum.compare import compare, slim_stage
from usspectrum.results import write_table

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "us-uniform": {"kind": "us"},
    "us-nonuniform": {"kind": "us", "nonuniform": True},
    "s-net-4switch": {"kind": "slimmable"},
    "individual": {"kind": "individual"},
    "us-uniform-avg": {"kind": "us", "average_output": True},
}
TABLE1_WIDTHS = "0.25,0.5,0.75,1.0"


def recipe(args: argparse.Namespace) -> TrainConfig:
    """What every model shares; only the fields of MODELS differ."""
    return TrainConfig(data=args.data, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=0.5,
                       repeats=tuple(args.repeats), train_images=args.train_images,
                       val_images=2000, calib_images=1000, device=args.device,
                       progress=not args.quiet)


def train_all(args: argparse.Namespace, out: Path) -> dict[str, Path]:
    base = recipe(args)
    paths = {name: out / f"{name}.pt" for name in MODELS}
    for epoch in range(1, args.epochs + 1):
        for name, fields in MODELS.items():
            if epoch > epochs_for(name, args):
                continue
            if epochs_logged(paths[name]) < epoch:
                started = time.perf_counter()
                result = train(base, **fields, out=str(paths[name]), stop_after=epoch,
                               resume=paths[name].exists())
                last = result.log.iloc[-1] if len(result.log) else None
                if last is not None and int(last["epoch"]) == epoch:
                    print(f"epoch {epoch}/{epochs_for(name, args)} {name}: loss {last['loss']:.3f}, "
                          f"top-1 {last['top1_smallest']:.2f} / {last['top1_largest']:.2f} "
                          f"({time.perf_counter() - started:.0f} s)", flush=True)
            if epoch == args.table1_epochs:
                snapshot(paths[name], out)
    return paths


def epochs_for(name: str, args: argparse.Namespace) -> int:
    return args.table1_epochs if name == "us-uniform-avg" else args.epochs


def snapshot(checkpoint: Path, out: Path) -> None:
    """Keep the checkpoint as it is after the Table 1 epoch (once)."""
    copy = out / f"epoch{epochs_logged(checkpoint)}" / checkpoint.name
    if not copy.exists():
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(checkpoint, copy)
        shutil.copyfile(checkpoint.with_name(checkpoint.stem + "-log.csv"),
                        copy.with_name(copy.stem + "-log.csv"))


def epochs_logged(checkpoint: Path) -> int:
    """Epochs finished by a model so far, from its training log."""
    log = checkpoint.with_name(checkpoint.stem + "-log.csv")
    if not checkpoint.exists() or not log.exists():
        return 0
    epochs = pd.read_csv(log)["epoch"]
    return int(epochs.max()) if len(epochs) else 0


def ship(trained: dict[str, Path], folder: Path) -> dict[str, Path]:
    """Compact copies of the trained checkpoints (no optimizer state, float16
    on disk) in ``folder``, made once."""
    folder.mkdir(parents=True, exist_ok=True)
    shipped = {}
    for name, path in trained.items():
        shipped[name] = folder / path.name
        if not shipped[name].exists():
            compact_checkpoint(path, shipped[name])
    return shipped


def precision_check(trained: Path, shipped_rows: pd.DataFrame, out: Path, data: str,
                    settings: SweepSettings) -> pd.DataFrame:
    """Top-1 of the float32 training checkpoint against the shipped float16
    copy (Table 1's widths, same calibration images): what shipping costs."""
    full = sweep(trained, data, TABLE1_WIDTHS, out / "precision-float32.csv", settings)
    half = shipped_rows.assign(width=shipped_rows["width"].astype(float)).set_index("width")
    check = pd.DataFrame({"width": full["width"], "top1_float32": full["top1"].values,
                          "top1_float16": half.loc[full["width"].astype(float), "top1"].values})
    check["difference"] = (check["top1_float16"] - check["top1_float32"]).round(2)
    write_table(check, out / "precision-check.csv")
    return check


def table1(paths: dict[str, Path], data: str, out: Path, settings: SweepSettings) -> pd.DataFrame:
    """Top-1 error of the uniform US-Net without and with output averaging,
    both after the same number of epochs."""
    frames = {name: sweep(paths[name], data, TABLE1_WIDTHS, out / f"table1-{name}.csv", settings)
              for name in ("us-uniform", "us-uniform-avg")}
    plain, averaged = (frames[n].set_index("width") for n in ("us-uniform", "us-uniform-avg"))
    table = pd.DataFrame({
        "width": plain.index,
        "mflops": plain["mflops"].values,
        "error_plain": (100 - plain["top1"]).round(2).values,
        "error_averaged": (100 - averaged.loc[plain.index, "top1"]).round(2).values,
    })
    table["averaging_gain"] = (table["error_plain"] - table["error_averaged"]).round(2)
    write_table(table, out / "table1.csv")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # relative defaults: the CSVs record checkpoint paths as given, portable across machines
    parser.add_argument("--data", default=os.path.relpath(ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--out", default=os.path.relpath(ROOT / "examples" / "results" / "cifar10"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--table1-epochs", type=int, default=2,
                        help="epochs of us-uniform-avg; Table 1 compares both US-Nets there")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--train-images", type=int, default=None, help="default: all")
    parser.add_argument("--repeats", type=int, nargs=5, default=(1, 2, 2, 6, 2),
                        help="blocks per stage (default: the paper's full depth)")
    parser.add_argument("--eval-images", type=int, default=None, help="default: all of val/")
    parser.add_argument("--calib-images", type=int, default=2000)
    parser.add_argument("--widths", default="0.25:1.0:0.05")
    parser.add_argument("--stage-widths", default="0.25:1.0:0.125")
    parser.add_argument("--train-only", action="store_true", help="stop after training")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    trained = train_all(args, out)
    print(f"training done ({time.perf_counter() - started:.0f} s this run)", flush=True)
    if args.train_only:
        return
    # the figures come from the shipped float16 checkpoints (float32 once loaded),
    # so `usspectrum sweep` on a shipped model reproduces its rows exactly
    n = args.table1_epochs
    final = {name: path for name, path in trained.items() if name != "us-uniform-avg"}
    paths = ship(final, out / "models")
    # Table 1's pair, both after n epochs
    pair = ship({"us-uniform": out / f"epoch{n}" / "us-uniform.pt",
                 "us-uniform-avg": trained["us-uniform-avg"]}, out / "models" / f"epoch{n}")
    # every width of every model calibrated on the same 2,000 training images
    settings = SweepSettings(calib_images=args.calib_images, eval_images=args.eval_images,
                             calibration="always", device=args.device, progress=not args.quiet)
    t0 = time.perf_counter()
    figure2 = compare([paths[m] for m in ("us-uniform", "s-net-4switch", "individual")],
                      args.data, args.widths, out, settings)
    figure1 = slim_stage(paths["us-nonuniform"], args.data, [1, 2, 3, 4, 5], 0.6,
                         args.stage_widths, out / "slim-stage.csv", settings)
    errors = table1(pair, args.data, out, settings)
    compare([out / f"epoch{n}" / f"{m}.pt" for m in ("us-uniform", "s-net-4switch", "individual")],
            args.data, TABLE1_WIDTHS, out / f"epoch{n}", settings, plot=False)
    shipped_us = figure2[figure2["model"] == "us-uniform"]
    precision = precision_check(trained["us-uniform"], shipped_us, out, args.data, settings)
    print(f"sweeps took {time.perf_counter() - t0:.0f} s")
    print(precision.to_string(index=False))
    print(figure2.pivot(index="width", columns="model", values="top1").to_string())
    print(figure1[["width", "mflops", "top1"]].to_string(index=False))
    print(errors.to_string(index=False))


if __name__ == "__main__":
    main()
