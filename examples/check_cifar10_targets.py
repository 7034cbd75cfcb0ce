"""Check a CIFAR-10 reproduction folder against the long run's targets.

Reads only committed files of OUT (default examples/results/cifar10): the
per-model ``*-log.csv``, ``compare.csv`` (all 10,000 val images),
``claims.csv`` and, with ``--sweep``, re-evaluates one row of
``compare.csv`` from the shipped float16 model in OUT/models/. Prints one
PASS/FAIL line per target and exits 1 when any fails.

    python examples/check_cifar10_targets.py
    python examples/check_cifar10_targets.py --out examples/results/cifar10 --sweep us-uniform:0.35
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("us-uniform", "us-nonuniform", "s-net-4switch", "individual", "us-uniform-avg")
MIN_EPOCHS = 30
INDIVIDUAL_MIN = 88.0
US_BEHIND_MAX = 1.0
REPRODUCE_TOL = 0.05
SHIPPED_MB_MAX = 40.0


def top1(compare: pd.DataFrame, model: str, width: str) -> float:
    row = compare[(compare.model == model) & (compare.width == width)]
    if len(row) != 1:
        raise SystemExit(f"compare.csv holds {len(row)} rows for {model} at {width}; expected 1")
    return float(row.top1.iloc[0])


def checks(out: Path) -> list[tuple[str, bool, str]]:
    """(target, holds, measured) for every target readable from files."""
    results = []
    epochs = {m: int(pd.read_csv(out / f"{m}-log.csv").epoch.max()) for m in MODELS}
    results.append((f"every log reaches epoch >= {MIN_EPOCHS}",
                    min(epochs.values()) >= MIN_EPOCHS,
                    ", ".join(f"{m} {e}" for m, e in epochs.items())))

    compare = pd.read_csv(out / "compare.csv", dtype={"width": str})
    images = set(compare.eval_images)
    results.append(("compare.csv evaluated on all 10,000 val images", images == {10000},
                    f"eval_images {sorted(images)}"))
    ind, us = top1(compare, "individual", "1.0"), top1(compare, "us-uniform", "1.0")
    results.append((f"individual >= {INDIVIDUAL_MIN} top-1 at 1.0", ind >= INDIVIDUAL_MIN,
                    f"{ind:.2f}"))
    results.append((f"US-Net at 1.0 >= individual - {US_BEHIND_MAX}", us >= ind - US_BEHIND_MAX,
                    f"US {us:.2f} vs individual {ind:.2f} ({us - ind:+.2f})"))

    claims = pd.read_csv(out / "claims.csv")
    for _, claim in claims.iterrows():
        results.append((f"claim: {claim['claim']}", bool(claim["holds"]), claim["ours"]))

    tracked = subprocess.run(["git", "ls-files", "*.pt"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    mb = sum((ROOT / p).stat().st_size for p in tracked if (ROOT / p).exists()) / 1e6
    results.append((f"tracked .pt files <= {SHIPPED_MB_MAX:g} MB", mb <= SHIPPED_MB_MAX,
                    f"{mb:.1f} MB in {len(tracked)} files"))
    return results


def reproduce(out: Path, model: str, width: str, data: str) -> tuple[str, bool, str]:
    """Re-evaluate one compare.csv row from the shipped model, as a user would."""
    from usspectrum import SweepSettings, sweep

    compare = pd.read_csv(out / "compare.csv", dtype={"width": str})
    expected = top1(compare, model, width)
    settings = SweepSettings(calibration="always")
    got = sweep(str(out / "models" / f"{model}.pt"), data=data, widths=[float(width)],
                settings=settings)
    measured = float(got.top1.iloc[0])
    return (f"shipped {model} reproduces its {width} row within {REPRODUCE_TOL}",
            abs(measured - expected) <= REPRODUCE_TOL,
            f"{measured:.2f} vs {expected:.2f} in compare.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "examples/results/cifar10")
    parser.add_argument("--sweep", metavar="MODEL:WIDTH", action="append", default=[],
                        help="re-evaluate this compare.csv row from OUT/models/ (repeatable)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10"))
    args = parser.parse_args()
    results = checks(args.out)
    for spec in args.sweep:
        model, _, width = spec.partition(":")
        results.append(reproduce(args.out, model, width, args.data))
    for target, holds, measured in results:
        print(f"{'PASS' if holds else 'FAIL'}  {target}: {measured}")
    sys.exit(0 if all(h for _, h, _ in results) else 1)


if __name__ == "__main__":
    main()
