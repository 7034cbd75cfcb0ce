"""Read the reproduction's results against the paper's claims.

Reads OUT/compare.csv (Figure 2), OUT/slim-stage.csv (Figure 1),
OUT/table1.csv (Table 1) and the per-epoch training logs written by
``examples/reproduce_cifar10.py``, and writes

* OUT/claims.csv: claim, the paper's number, ours, holds or not, and the
  criterion used;
* OUT/learning-curve.csv: per epoch, the gaps the claims are about, as the
  training logs measured them (2,000 val images, BN calibrated at the
  smallest and largest width only);
* OUT/learning-curve.png/.svg: val top-1 per epoch of every model at 0.25
  and at 1.0 (from the logs' per-width columns, when they have them);
* OUT/wall-time.csv: per model, the epochs its log holds and their summed
  training time (the log's ``seconds``: one thread, validation excluded);
* OUT/claims-trend.csv, when OUT/epoch<N>/claims.csv exist (snapshots of
  the same run): each claim's measured value and verdict at every snapshot
  epoch and at the end, side by side.

    python examples/claims_cifar10.py                       # examples/results/cifar10
    python examples/claims_cifar10.py --out /tmp/smoke
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from usspectrum.nn.width import WidthConfig

ROOT = Path(__file__).resolve().parents[1]
SWITCHES = ["0.25", "0.5", "0.75", "1.0"]
# The paper's numbers (ImageNet top-1 error, %): the facts file; the
# individual MobileNet v1 1.0x from the Slimmable Networks paper's table.
PAPER_US = {"0.25": 44.3, "0.5": 35.8, "0.75": 30.5, "1.0": 28.2}
PAPER_S = {"0.25": 46.9, "0.5": 35.2, "0.75": 30.5, "1.0": 28.5}
PAPER_INDIVIDUAL_1 = 29.1
PAPER_TABLE1 = (34.7, 34.3)  # average error without / with output averaging


def spectrum(df: pd.DataFrame, model: str) -> pd.Series:
    rows = df[df["model"] == model]
    return pd.Series(rows["top1"].values, index=rows["width"].astype(str).values)


def stage_losses(df: pd.DataFrame, min_stage_width: float = 0.0) -> dict[str, float]:
    """Mean top-1 lost against the uniform curve at equal MFLOPs, per stage
    curve (linear interpolation of the uniform curve in MFLOPs).

    ``min_stage_width`` keeps only the points whose slimmed stage runs at
    that width or more (for "0.375@s3x0.6": 0.375 x 0.6 = 0.225), so that
    points outside the trained range (below the sandwich's smallest width)
    can be left out."""
    configs = [WidthConfig.parse(w) for w in df["width"].astype(str)]
    uniform = df[[c.is_uniform for c in configs]].sort_values("mflops")
    # the width each point runs its slimmed stage at, per stage
    stage_widths = [{s: c.width * r for s, r in c.stage_ratios} for c in configs]
    out = {}
    for stage in sorted({s for widths in stage_widths for s in widths}):
        rows = df[[widths.get(stage, -1.0) >= min_stage_width - 1e-9 for widths in stage_widths]]
        inside = rows[(rows.mflops >= uniform.mflops.min()) & (rows.mflops <= uniform.mflops.max())]
        at_equal = np.interp(inside.mflops, uniform.mflops, uniform.top1)
        out[str(stage)] = float(np.mean(at_equal - inside.top1)) if len(inside) else float("nan")
    return out


def _worst(losses: dict[str, float]) -> str:
    return max(losses, key=lambda k: np.nan_to_num(losses[k], nan=-np.inf))


def _describe(losses: dict[str, float]) -> str:
    return ", ".join(f"stage {k}: {v:.2f}" for k, v in losses.items()) + f"; worst: {_worst(losses)}"


def claims(out: Path) -> pd.DataFrame:
    cmp = pd.read_csv(out / "compare.csv", dtype={"width": str})
    us, s, ind = (spectrum(cmp, m) for m in ("us-uniform", "s-net-4switch", "individual"))
    rows = []

    below = [w for w in ind.index if float(w) <= 0.75]
    worst_gap = float((us[below] - ind[below]).min())
    rows.append({
        "claim": "individual net collapses below 1.0, even after calibration",
        "paper": "fails when slimmed (Figure 2)",
        "ours": f"top-1 at 0.5: {ind['0.5']:.2f} vs {ind['1.0']:.2f} at 1.0; US-Net ahead by "
                f">= {worst_gap:.2f} points at every width <= 0.75",
        "holds": bool(ind["0.5"] <= ind["1.0"] - 10 and worst_gap >= 10),
        "criterion": ">= 10 points below its own 1.0 at 0.5 and below the US-Net by >= 10 "
                     "at every width <= 0.75"})

    gaps = {w: us[w] - s[w] for w in SWITCHES}
    paper = ", ".join(f"{w}: {PAPER_S[w] - PAPER_US[w]:+.1f}" for w in SWITCHES)
    rows.append({
        "claim": "US-Net within 1.5 points of the S-Net at each switch",
        "paper": f"US minus S top-1 {paper}",
        "ours": ", ".join(f"{w}: {g:+.2f}" for w, g in gaps.items()),
        "holds": all(g >= -1.5 for g in gaps.values()),
        "criterion": "US top-1 >= S top-1 - 1.5 at 0.25, 0.5, 0.75, 1.0"})

    between = [w for w in us.index if w not in SWITCHES and w in s.index]
    mean_between = float((us[between] - s[between]).mean())
    rows.append({
        "claim": "US-Net above the S-Net between switches, on average",
        "paper": "S-Net cannot run between switches",
        "ours": f"mean US minus S over {len(between)} widths: {mean_between:+.2f}",
        "holds": mean_between > 0, "criterion": "mean difference > 0"})

    gap1 = us["1.0"] - ind["1.0"]
    rows.append({
        "claim": "US-Net at 1.0 within 1 point of the individual net, or better",
        "paper": f"US {100 - PAPER_US['1.0']:.1f} vs individual {100 - PAPER_INDIVIDUAL_1:.1f} "
                 f"({PAPER_INDIVIDUAL_1 - PAPER_US['1.0']:+.1f})",
        "ours": f"US {us['1.0']:.2f} vs individual {ind['1.0']:.2f} ({gap1:+.2f})",
        "holds": gap1 >= -1.0, "criterion": "US top-1 >= individual top-1 - 1"})

    slim = pd.read_csv(out / "slim-stage.csv", dtype={"width": str})
    losses = stage_losses(slim)
    worst = _worst(losses)
    # the same, without the points where the slimmed stage runs below the smallest
    # trained width (0.25): a reader can tell extrapolation from the trained range
    trained = stage_losses(slim, min_stage_width=0.25)
    rows.append({
        "claim": "slimming stage 5 is worst at equal FLOPs",
        "paper": "stage 5 worst (Figure 1)",
        "ours": f"{_describe(losses)} (slimmed stage >= 0.25 only: {_describe(trained)})",
        "holds": worst == "5",
        "criterion": "largest mean top-1 loss against the uniform curve at equal MFLOPs"})

    t1 = pd.read_csv(out / "table1.csv")
    plain, averaged = t1.error_plain.mean(), t1.error_averaged.mean()
    rows.append({
        "claim": "output averaging helps on average (Table 1)",
        "paper": f"mean error {PAPER_TABLE1[0]} -> {PAPER_TABLE1[1]}",
        "ours": f"mean error {plain:.2f} -> {averaged:.2f}",
        "holds": averaged < plain, "criterion": "lower mean top-1 error at 0.25/0.5/0.75/1.0"})
    return pd.DataFrame(rows)


LOG_LINE = re.compile(r"epoch (\d+)/\d+ (\S+): loss ([\d.]+), top-1 ([\d.]+) / ([\d.]+) \((\d+) s\)")


def read_run_log(path: Path) -> pd.DataFrame:
    """The per-epoch lines ``reproduce_cifar10.py`` prints, as a table (model,
    epoch, loss, top1_smallest, top1_largest, seconds). A resumed run prints
    the last finished epoch again (in ~0 s): the first line of each is kept."""
    rows = [dict(zip(("epoch", "model", "loss", "top1_smallest", "top1_largest", "seconds"),
                     m.groups()))
            for m in map(LOG_LINE.search, path.read_text().splitlines()) if m]
    df = pd.DataFrame(rows).drop_duplicates(["model", "epoch"], keep="first")
    return df.astype({"epoch": int, "loss": float, "top1_smallest": float,
                      "top1_largest": float, "seconds": int})


# what a log's top1_smallest / top1_largest measured when it names no widths
# (reproduce.log's lines): the individual net trains, and was logged, at 1.0 only
_LOGGED_WIDTHS = {"individual": ("1.0", "1.0")}


def _top1_at(log: pd.DataFrame, epoch: int, width: str, name: str) -> float:
    """Top-1 at ``width`` ("0.25" or "1.0") in one epoch's log row, or NaN
    where that width was not measured: the individual net's smallest logged
    width is 1.0, so its top1_smallest is not a top-1 at 0.25."""
    if epoch not in log.index:
        return np.nan
    row = log.loc[epoch]
    column = {"0.25": "top1_0.25", "1.0": "top1_1"}[width]
    if column in row.index and pd.notna(row[column]):
        return float(row[column])
    end = "smallest" if width == "0.25" else "largest"
    logged = (row[end] if end in row.index
              else _LOGGED_WIDTHS.get(name, ("0.25", "1.0"))[end == "largest"])
    return float(row[f"top1_{end}"]) if float(logged) == float(width) else np.nan


def learning_curve(out: Path, run: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per epoch, the claims' gaps: from the per-model logs in ``out``, or from
    ``run`` (``read_run_log``'s table) for a run whose logs are incomplete."""
    names = ("us-uniform", "s-net-4switch", "individual", "us-uniform-avg", "us-nonuniform")
    if run is not None:
        logs = {name: run[run.model == name].set_index("epoch") for name in names
                if (run.model == name).any()}
    else:
        logs = {name: pd.read_csv(out / f"{name}-log.csv").set_index("epoch")
                for name in names if (out / f"{name}-log.csv").exists()}
    # us-uniform-avg may stop early (Table 1's epochs): its later cells stay empty
    epochs = sorted(set.union(*(set(log.index) for log in logs.values())))
    rows = []
    for e in epochs:
        row = {"epoch": e}
        for name, log in logs.items():
            row[f"{name} 0.25"] = _top1_at(log, e, "0.25", name)
            row[f"{name} 1.0"] = _top1_at(log, e, "1.0", name)
        row["US - S at 0.25"] = round(row["us-uniform 0.25"] - row["s-net-4switch 0.25"], 2)
        row["US - S at 1.0"] = round(row["us-uniform 1.0"] - row["s-net-4switch 1.0"], 2)
        row["US - individual at 1.0"] = round(row["us-uniform 1.0"] - row["individual 1.0"], 2)
        rows.append(row)
    return pd.DataFrame(rows)


def trend(out: Path, final_epoch: int | None = None) -> pd.DataFrame | None:
    """Each claim's value and verdict at the snapshot epochs (OUT/epoch<N>/)
    and at the end (OUT/claims.csv), one column pair per epoch."""
    snapshots = sorted((int(d.name[5:]), d / "claims.csv") for d in out.glob("epoch[0-9]*")
                       if (d / "claims.csv").exists())
    if not snapshots:
        return None
    final_epoch = final_epoch or _final_epoch(out)
    table = pd.DataFrame({"claim": pd.read_csv(out / "claims.csv")["claim"]})
    for epoch, path in [*snapshots, (final_epoch, out / "claims.csv")]:
        at = pd.read_csv(path).set_index("claim").reindex(table["claim"])
        table[f"epoch {epoch}"] = at["ours"].values
        table[f"holds at {epoch}"] = at["holds"].values
    return table


def warm_restarts(log: pd.DataFrame) -> list[int]:
    """Epochs that begin a new cycle of the schedule: the logged learning
    rate (the one after the epoch's last step) rose since the epoch before."""
    if "lr" not in log.columns:
        return []
    rose = log["lr"].diff() > 0
    return log.loc[rose, "epoch"].astype(int).tolist()


def plot_learning_curves(out: Path) -> list[Path]:
    """Val top-1 per epoch at 0.25 and 1.0, one line per model, two panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = {log.name[: -len("-log.csv")]: pd.read_csv(log) for log in sorted(out.glob("*-log.csv"))}
    logs = {name: df for name, df in logs.items() if {"top1_0.25", "top1_1"} <= set(df.columns)}
    if not logs:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    restarts = warm_restarts(next(iter(logs.values())))
    for ax, (column, width) in zip(axes, (("top1_0.25", "0.25"), ("top1_1", "1.0"))):
        for name, df in logs.items():
            ax.plot(df["epoch"], df[column], marker=".", linewidth=1.2, label=name)
        for epoch in restarts:  # the dip after it is the restart, not a fault
            ax.axvline(epoch - 0.5, color="0.5", linestyle=":", linewidth=1)
        ax.set_title(f"width {width}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val top-1 (%, 2,000 images)")
    # the individual net collapses at 0.25: the left panel keeps its whole range
    axes[1].set_ylim(bottom=max(0, min(df["top1_1"].min() for df in logs.values()) - 5))
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    paths = [out / f"learning-curve.{fmt}" for fmt in ("png", "svg")]
    for path in paths:
        fig.savefig(path, dpi=150)
    plt.close(fig)
    return paths


def wall_time(out: Path) -> pd.DataFrame:
    """Per model: epochs logged, training hours (sum of the per-epoch
    ``seconds``) and mean images/s, from OUT/<model>-log.csv."""
    rows = []
    for log in sorted(out.glob("*-log.csv")):
        df = pd.read_csv(log)
        rows.append({"model": log.name[: -len("-log.csv")], "epochs": int(df["epoch"].max()),
                     "train_hours": round(float(df["seconds"].sum()) / 3600, 2),
                     "mean_images_per_s": round(float(df["images_per_s"].mean()), 1)})
    return pd.DataFrame(rows)


def _final_epoch(out: Path) -> int:
    """The epochs every model of the run finished (the smallest last epoch of its logs)."""
    logs = list(out.glob("*-log.csv"))
    return min(int(pd.read_csv(log)["epoch"].max()) for log in logs) if logs else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.relpath(ROOT / "examples" / "results" / "cifar10"))
    parser.add_argument("--earlier-run", default=None,
                        help="also write DIR/learning-curve.csv from DIR/reproduce.log "
                             "(a run whose checkpoints are gone)")
    args = parser.parse_args()
    out = Path(args.out)
    if args.earlier_run:
        earlier = Path(args.earlier_run)
        run = read_run_log(earlier / "reproduce.log")
        curve = learning_curve(earlier, run)
        curve.to_csv(earlier / "learning-curve.csv", index=False)
        print(curve.to_string(index=False), end="\n\n")
        seconds = run.groupby("model")["seconds"].sum()
        print(seconds.to_string(), end="\n\n")
    missing = [name for name in ("compare.csv", "slim-stage.csv", "table1.csv") if not (out / name).exists()]
    if missing:  # one line, not pandas' traceback: the figures have not been made yet
        sys.exit(f"Error: {out} has no {', '.join(missing)}; make the figures first "
                 f"(examples/reproduce_cifar10.py, or its --figures-at N for an epoch<N>/ folder)")
    table = claims(out)
    table.to_csv(out / "claims.csv", index=False)
    curve = learning_curve(out)
    curve.to_csv(out / "learning-curve.csv", index=False)
    plot_learning_curves(out)
    hours = wall_time(out)
    hours.to_csv(out / "wall-time.csv", index=False)
    over_epochs = trend(out)
    if over_epochs is not None:
        over_epochs.to_csv(out / "claims-trend.csv", index=False)
    print("| claim | paper | ours | holds |\n|---|---|---|---|")
    for _, r in table.iterrows():
        print(f"| {r.claim} | {r.paper} | {r.ours} | {'yes' if r.holds else 'no'} |")
    print()
    print(curve.to_string(index=False))
    print()
    print(hours.to_string(index=False))
    if over_epochs is not None:
        print()
        print(over_epochs.to_string(index=False))


if __name__ == "__main__":
    main()
