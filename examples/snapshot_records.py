"""One model's share of a snapshot's records, and the records once every share
is there: the long CIFAR-10 run trains its models one after another
(``examples/long_run_in_order.py``), so the five snapshots of an epoch are
never on disk together.

``--model NAME --epoch N`` sweeps OUT/epoch<N>/NAME.pt (the float32 snapshot)
exactly as ``reproduce_cifar10.py --figures-at N`` would for that model, with
the pinned code (run it with ``PYTHONPATH=runs/pinned``), into the per-model
CSVs that command writes:

* us-uniform, s-net-4switch, individual: ``<name>.csv`` (Figure 2's curve);
* us-uniform, us-uniform-avg: ``table1-<name>.csv`` (Table 1);
* us-nonuniform: ``slim-stage.csv`` (Figure 1);
* us-uniform-avg, us-nonuniform: ``why-<name>.csv``, their rows of
  ``why_claims_cifar10.py``'s probes (the stage probe's sweep in
  ``why-stages.csv``).

These CSVs are small and committed at once, so a lost machine cannot take
them. ``--ship NAME`` makes the finished model's float16 copy,
OUT/models/NAME.pt, as the pinned ``ship()`` does (committed at once too);
``--final --model NAME`` sweeps that copy into OUT/ (the end's records, made
from the shipped files as the pinned script makes them); for us-uniform also
its float32 checkpoint, while it is on disk, into ``precision-float32.csv``
(what shipping in float16 costs: ``precision-check.csv``). ``--assemble --epoch N`` (no model needed, works from the CSVs alone)
then writes ``compare.csv``/``.png``/``.svg``, the slim-stage plot and
``table1.csv`` as the pinned ``figures()`` does, and ``why.csv`` as
``why_claims_cifar10.py`` does; ``claims_cifar10.py --out
OUT/epoch<N>`` reads them.

    PYTHONPATH=runs/pinned python examples/snapshot_records.py --epoch 10 --model individual
    PYTHONPATH=runs/pinned python examples/snapshot_records.py --epoch 10 --assemble
    PYTHONPATH=runs/pinned python examples/snapshot_records.py --ship individual
    PYTHONPATH=runs/pinned python examples/snapshot_records.py --final --model individual
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
# what reproduce_cifar10.py's figures() uses (its argparse defaults)
WIDTHS = "0.25:1.0:0.05"
STAGE_WIDTHS = "0.25:1.0:0.125"
TABLE1_WIDTHS = "0.25,0.5,0.75,1.0"
CALIB_IMAGES = 2000
FIGURE2 = ("us-uniform", "s-net-4switch", "individual")
TABLE1 = ("us-uniform", "us-uniform-avg")
S_NET_SWITCHES = ("0.25", "0.5", "0.75", "1.0")
WHY = ("us-uniform-avg", "us-nonuniform")  # the models why_claims_cifar10.py probes


def _example(name: str):
    """Another script of examples/, as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shares(name: str) -> list[str]:
    """The CSVs ``name`` contributes to a snapshot's records."""
    files = []
    if name in FIGURE2:
        files.append(f"{name}.csv")
    if name in TABLE1:
        files.append(f"table1-{name}.csv")
    if name == "us-nonuniform":
        files.append("slim-stage.csv")
    if name in WHY:
        files.append(f"why-{name}.csv")
    if not files:
        raise SystemExit(f"Error: no records come from {name!r}; models: "
                         f"{', '.join(FIGURE2 + TABLE1[1:] + ('us-nonuniform',))}")
    return files


def sweep_share(name: str, folder: Path, data: str, checkpoint: Path | None = None) -> list[Path]:
    """Sweep ``checkpoint`` (default ``folder/name.pt``) into its share of the
    records in ``folder`` (resumes)."""
    from usspectrum import SweepSettings, sweep
    from usspectrum.spectrum.compare import compare, slim_stage

    checkpoint = checkpoint or folder / f"{name}.pt"
    if not checkpoint.exists():
        raise SystemExit(f"Error: {checkpoint} is missing; a snapshot is taken when the model "
                         "finishes that epoch, a shipped copy by --ship")
    settings = SweepSettings(calib_images=CALIB_IMAGES, eval_images=None, calibration="always",
                             device="cpu", progress=False)
    if name in FIGURE2:
        # compare() of one model writes <name>.csv as compare() of three does (and a
        # compare.csv of that model alone, which --assemble replaces)
        compare([checkpoint], data, WIDTHS, folder, settings, plot=False)
    if name in TABLE1:
        sweep(checkpoint, data, TABLE1_WIDTHS, folder / f"table1-{name}.csv", settings)
    if name == "us-nonuniform":
        slim_stage(checkpoint, data, [1, 2, 3, 4, 5], 0.6, STAGE_WIDTHS,
                   folder / "slim-stage.csv", settings)
    if name == "us-uniform" and checkpoint.parent.name == "models":
        trained = folder / f"{name}.pt"  # the float32 training checkpoint
        if trained.exists():
            sweep(trained, data, TABLE1_WIDTHS, folder / "precision-float32.csv", settings)
        else:
            print(f"{trained} is gone: no precision check (it needs the float32 checkpoint)")
    if name in WHY:
        import torch
        from usspectrum.io.results import write_table

        why = _example("why_claims_cifar10")
        torch.manual_seed(0)  # as why_claims_cifar10.py's main()
        if name == "us-uniform-avg":
            rows = why.averaging_probe(checkpoint, data)
        else:
            rows = (why.stage_probe(checkpoint, data, folder, settings)
                    + why.feature_spectrum(checkpoint, data))
        write_table(pd.DataFrame(rows), folder / f"why-{name}.csv")
    return [folder / f for f in shares(name)]


def assemble(folder: Path) -> None:
    """compare.csv and its plot, the slim-stage plot and table1.csv from the
    per-model CSVs, as reproduce_cifar10.py's figures() writes them."""
    from usspectrum.io.plot import plot_spectrum
    from usspectrum.io.results import write_table

    needed = [f for n in FIGURE2 + TABLE1[1:] + ("us-nonuniform",) for f in shares(n)]
    missing = [f for f in dict.fromkeys(needed) if not (folder / f).exists()]
    if missing:
        raise SystemExit(f"Error: {folder} lacks {', '.join(missing)}; sweep those models' "
                         "snapshots first (--model NAME)")
    figure2 = pd.concat([pd.read_csv(folder / f"{n}.csv", dtype={"width": str})
                         for n in FIGURE2], ignore_index=True)
    write_table(figure2, folder / "compare.csv")
    plot_spectrum(figure2, folder / "compare", marked={"s-net-4switch": list(S_NET_SWITCHES)},
                  title="Accuracy vs MFLOPs (BN calibrated at every width)")
    figure1 = pd.read_csv(folder / "slim-stage.csv", dtype={"width": str})
    plot_spectrum(figure1, folder / "slim-stage",
                  title="Slimming single stages by x0.6 (nonuniform US-Net)")
    plain, averaged = (pd.read_csv(folder / f"table1-{n}.csv").set_index("width") for n in TABLE1)
    table = pd.DataFrame({
        "width": plain.index,
        "mflops": plain["mflops"].values,
        "error_plain": (100 - plain["top1"]).round(2).values,
        "error_averaged": (100 - averaged.loc[plain.index, "top1"]).round(2).values,
    })
    table["averaging_gain"] = (table["error_plain"] - table["error_averaged"]).round(2)
    write_table(table, folder / "table1.csv")
    # why.csv's rows in why_claims_cifar10.py's order; the logs' rows need both logs
    why = _example("why_claims_cifar10")
    spread = (why.run_to_run_spread(folder) if all(
        (folder / f"{n}-log.csv").exists() for n in TABLE1) else [])
    rows = pd.concat([pd.read_csv(folder / "why-us-uniform-avg.csv"), pd.DataFrame(spread),
                      pd.read_csv(folder / "why-us-nonuniform.csv")], ignore_index=True)
    write_table(rows, folder / "why.csv")
    if (folder / "precision-float32.csv").exists():  # the end's records only
        full = pd.read_csv(folder / "precision-float32.csv")
        half = figure2[figure2.model == "us-uniform"].assign(
            width=lambda d: d.width.astype(float)).set_index("width")
        check = pd.DataFrame({"width": full["width"], "top1_float32": full["top1"].values,
                              "top1_float16": half.loc[full["width"].astype(float), "top1"].values})
        check["difference"] = (check["top1_float16"] - check["top1_float32"]).round(2)
        write_table(check, folder / "precision-check.csv")
    print(figure2.pivot(index="width", columns="model", values="top1").to_string())
    print(table.to_string(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.relpath(ROOT / "examples" / "results" / "cifar10-long"))
    parser.add_argument("--data", default=os.path.relpath(ROOT.parent / "shared" / "data" / "cifar10"))
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--epoch", type=int, help="the snapshot of this epoch (OUT/epoch<N>/)")
    when.add_argument("--final", action="store_true", help="the shipped copies (OUT/models/)")
    when.add_argument("--ship", metavar="NAME", help="write OUT/models/NAME.pt from OUT/NAME.pt")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--model", help="sweep this model into its CSVs")
    what.add_argument("--assemble", action="store_true", help="the records from the CSVs")
    args = parser.parse_args()
    out = Path(args.out)
    if args.ship:
        from usspectrum.io.checkpoint import compact_checkpoint

        shipped = out / "models" / f"{args.ship}.pt"
        if shipped.exists():
            raise SystemExit(f"Error: {shipped} exists; it is made once")
        shipped.parent.mkdir(exist_ok=True)
        compact_checkpoint(out / f"{args.ship}.pt", shipped)
        print(f"{shipped}: {shipped.stat().st_size / 1e6:.2f} MB")
        return
    if not (args.model or args.assemble):
        parser.error("give --model NAME or --assemble")
    folder = out if args.final else out / f"epoch{args.epoch}"
    if args.assemble:
        assemble(folder)
        return
    shares(args.model)  # an unknown name fails before the sweep
    checkpoint = out / "models" / f"{args.model}.pt" if args.final else None
    t0 = time.perf_counter()
    written = sweep_share(args.model, folder, args.data, checkpoint)
    print(f"{args.model} at {'the end' if args.final else f'epoch {args.epoch}'}: "
          f"{', '.join(map(str, written))} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
