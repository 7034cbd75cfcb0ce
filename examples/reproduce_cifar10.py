"""Reproduce the US-Nets paper's Figures 1 and 2 and Table 1 on CIFAR-10.

Trains, with one recipe and the same number of epochs (default 45), full-depth
MobileNet v1s (CIFAR stem, 32x32) on the whole 50,000-image training split:

* ``us-uniform``      US-Net, uniform sandwich widths (Figure 2, Table 1)
* ``us-nonuniform``   US-Net, per-layer sandwich widths (Figure 1)
* ``s-net-4switch``   slimmable net at 0.25/0.5/0.75/1.0 (Figure 2)
* ``individual``      plain net at 1.0, sliced below it (Figure 2)
* ``us-uniform-avg``  uniform US-Net with output averaging (Table 1)

The recipe (every model): SGD with Nesterov momentum 0.9, batch 128, 45
epochs: a one-epoch linear warm-up to lr 0.1, then cosine decay to 0,
weight decay 5e-4 (not on depthwise convs, BN or biases), no label
smoothing, padded random crops and horizontal flips. US-Nets: sandwich of 4
widths in 0.25-1.0, half inplace distillation, half labels. (Two earlier
attempts trained two 30-epoch cycles, 60 epochs; both lost their
checkpoints with the machine at epochs 57-59, after about 24 hours. One
45-epoch cycle costs 3/4 of that, and ``--cycles 2 --epochs 60`` still
gives the old schedule.)

Training runs one epoch per job, ``--jobs`` jobs at a time (each its own
one-thread process when more than one; ``--jobs 1`` gives the one process
every core), the model furthest behind first, so the per-epoch logs
(``<name>-log.csv``: loss, images/s, val top-1 on 2,000 images at 0.25, 0.5,
0.75 and 1.0, calibrated on 1,000 augmented training images) grow together.
Progress is saved every ``--checkpoint-minutes`` inside an epoch
(``<name>.pt.partial.pt``) and after it (``<name>.pt``); rerunning the same
command resumes every model where it stopped, bit for bit. After the epochs
of ``--snapshot-epochs`` each model is copied to OUT/epoch<N>/. (On the
first attempts' machines two one-thread jobs beat one two-thread job by
about 10%; on the seventh's, one two-thread job trained the individual net
at 370.4 images/s against 179.47 for each of two one-thread jobs. The long
run, ``long_run_cifar10.sh``, trains one model at a time with ``--jobs 1``;
see ``long_run_in_order.py``.)

Then, every width BN-calibrated on 2,000 training images and evaluated on
all 10,000 validation images:

* Figure 2 -> OUT/compare.csv, compare.png/.svg (0.25:1.0:0.05)
* Figure 1 -> OUT/slim-stage.csv, slim-stage.png/.svg (x0.6 on each stage)
* Table 1  -> OUT/table1.csv (top-1 error at 0.25/0.5/0.75/1.0)
* OUT/precision-check.csv: top-1 of the float32 and the shipped float16 US-Net

``--figures-at N`` makes the same three of the OUT/epoch<N>/ snapshots, into
that folder. The training checkpoints (float32 with optimizer state) stay
out of git; the figures are made from compact copies in OUT/models/ (float16
on disk, float32 once loaded), which are what the repository ships.

    python examples/reproduce_cifar10.py --train-only     # ../shared/data/cifar10
    python examples/reproduce_cifar10.py --figures-at 10
    python examples/reproduce_cifar10.py                  # figures of the final models
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import pandas as pd

from usspectrum import SweepSettings, TrainConfig, sweep, train
from usspectrum.io.checkpoint import compact_checkpoint
from usspectrum.spectrum.compare import compare, slim_stage
from usspectrum.errors import UsageError, USSpectrumError
from usspectrum.io.results import write_table

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "us-uniform": {"kind": "us"},
    "us-nonuniform": {"kind": "us", "nonuniform": True},
    "s-net-4switch": {"kind": "slimmable"},
    "individual": {"kind": "individual"},
    "us-uniform-avg": {"kind": "us", "average_output": True},
}
TABLE1_WIDTHS = "0.25,0.5,0.75,1.0"
LOG_WIDTHS = (0.25, 0.5, 0.75, 1.0)  # per-epoch val top-1 in every log


def recipe(args: argparse.Namespace) -> TrainConfig:
    """What every model shares; only the fields of MODELS differ."""
    return TrainConfig(data=args.data, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, weight_decay=args.weight_decay,
                       warmup_epochs=args.warmup_epochs, cycles=args.cycles,
                       label_smoothing=args.label_smoothing,
                       repeats=tuple(args.repeats), train_images=args.train_images,
                       val_images=2000, calib_images=1000, eval_widths=LOG_WIDTHS,
                       checkpoint_minutes=args.checkpoint_minutes, device=args.device,
                       threads=1 if args.jobs > 1 else None,
                       progress=not args.quiet and args.jobs == 1)


def train_epoch(base: TrainConfig, name: str, path: Path, epoch: int) -> dict | None:
    """Train ``name`` up to the end of ``epoch`` (resuming its checkpoint or
    its mid-epoch progress file); the log row of that epoch."""
    resume = path.exists() or path.with_name(path.name + ".partial.pt").exists()
    result = train(base, **MODELS[name], out=str(path), stop_after=epoch, resume=resume)
    last = result.log.iloc[-1] if len(result.log) else None
    return None if last is None else last.to_dict()


def next_jobs(done: dict[str, int], running: set[str], epochs: int, free: int) -> list[str]:
    """Models to train next: those furthest behind first, so every model's
    log grows together."""
    waiting = sorted((n for n in MODELS if n not in running and done[n] < epochs),
                     key=lambda n: (done[n], list(MODELS).index(n)))
    return waiting[:free]


def train_all(args: argparse.Namespace, out: Path) -> dict[str, Path]:
    """Every model for ``args.epochs`` epochs, one epoch per job, ``args.jobs``
    jobs at a time (each its own process with one thread when > 1)."""
    base = recipe(args)
    paths = {name: out / f"{name}.pt" for name in MODELS}
    done = {name: epochs_logged(paths[name]) for name in MODELS}
    for name in MODELS:
        for epoch in args.snapshot_epochs:
            if done[name] >= epoch:
                snapshot(paths[name], out, epoch)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        running: dict = {}
        while True:
            for name in next_jobs(done, set(running.values()), args.epochs,
                                  args.jobs - len(running)):
                job = pool.submit(train_epoch, base, name, paths[name], done[name] + 1)
                running[job] = name
                running_since[name] = time.perf_counter()
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for job in finished:
                name = running.pop(job)
                last = job.result()
                done[name] = epochs_logged(paths[name])
                print(f"epoch {done[name]}/{args.epochs} {name}: loss {last['loss']:.3f}, top-1 "
                      + " / ".join(f"{last[f'top1_{w:g}']:.2f}" for w in LOG_WIDTHS)
                      + f" at {', '.join(f'{w:g}' for w in LOG_WIDTHS)} "
                      f"({time.perf_counter() - running_since[name]:.0f} s)", flush=True)
                if done[name] in args.snapshot_epochs:
                    snapshot(paths[name], out, done[name])
    return paths


running_since: dict[str, float] = {}


def snapshot(checkpoint: Path, out: Path, epoch: int) -> None:
    """Keep the checkpoint as it is after ``epoch`` (once)."""
    copy = out / f"epoch{epoch}" / checkpoint.name
    if not copy.exists() and epochs_logged(checkpoint) == epoch:
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(checkpoint.with_name(checkpoint.stem + "-log.csv"),
                        copy.with_name(copy.stem + "-log.csv"))
        shutil.copyfile(checkpoint, copy)


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


def figures(args: argparse.Namespace, models: dict[str, Path], out: Path) -> pd.DataFrame:
    """Figure 2, Figure 1 and Table 1 of ``models`` into ``out``: every width
    of every model calibrated on the same 2,000 training images and
    evaluated on all of val/."""
    settings = SweepSettings(calib_images=args.calib_images, eval_images=args.eval_images,
                             calibration="always", device=args.device, progress=not args.quiet)
    t0 = time.perf_counter()
    figure2 = compare([models[m] for m in ("us-uniform", "s-net-4switch", "individual")],
                      args.data, args.widths, out, settings)
    figure1 = slim_stage(models["us-nonuniform"], args.data, [1, 2, 3, 4, 5], 0.6,
                         args.stage_widths, out / "slim-stage.csv", settings)
    errors = table1(models, args.data, out, settings)
    print(f"sweeps took {time.perf_counter() - t0:.0f} s")
    print(figure2.pivot(index="width", columns="model", values="top1").to_string())
    print(figure1[["width", "mflops", "top1"]].to_string(index=False))
    print(errors.to_string(index=False))
    return figure2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # relative defaults: the CSVs record checkpoint paths as given, portable across machines
    parser.add_argument("--data", default=os.path.relpath(ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--out", default=os.path.relpath(ROOT / "examples" / "results" / "cifar10"))
    parser.add_argument("--epochs", type=int, default=45)
    parser.add_argument("--cycles", type=int, default=1,
                        help="warm restarts: the schedule repeats every epochs/cycles epochs")
    parser.add_argument("--snapshot-epochs", type=int, nargs="*", default=[10, 20, 30],
                        help="keep every model as it is after these epochs (OUT/epoch<N>/)")
    parser.add_argument("--figures-at", type=int, default=None, metavar="N",
                        help="only make the figures of the OUT/epoch<N>/ snapshots, into that folder")
    parser.add_argument("--jobs", type=int, default=2,
                        help="models trained at once, each in its own one-thread process")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
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
    if args.figures_at is not None:
        folder = out / f"epoch{args.figures_at}"
        figures(args, {name: folder / f"{name}.pt" for name in MODELS}, folder)
        return
    started = time.perf_counter()
    trained = train_all(args, out)
    print(f"training done ({time.perf_counter() - started:.0f} s this run)", flush=True)
    if args.train_only:
        return
    # the figures come from the shipped float16 checkpoints (float32 once loaded),
    # so `usspectrum sweep` on a shipped model reproduces its rows exactly
    paths = ship(trained, out / "models")
    figure2 = figures(args, paths, out)
    settings = SweepSettings(calib_images=args.calib_images, eval_images=args.eval_images,
                             calibration="always", device=args.device, progress=not args.quiet)
    shipped_us = figure2[figure2["model"] == "us-uniform"]
    precision = precision_check(trained["us-uniform"], shipped_us, out, args.data, settings)
    print(precision.to_string(index=False))


if __name__ == "__main__":
    try:
        main()
    except USSpectrumError as error:  # a missing --data folder, say: one line, as the CLI prints it
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(2 if isinstance(error, UsageError) else 1)
