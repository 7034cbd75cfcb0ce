"""Paper-style spectrum figures: accuracy against MFLOPs (or latency)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..errors import UsageError
from .published import published
from .results import ensure_writable

X_AXES = {"mflops": "MFLOPs", "latency_ms": "Latency (ms, batch 1)"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
REQUIRED = ("width", "mflops", "top1")


def check_columns(df: pd.DataFrame, where: str, x: str = "mflops") -> None:
    missing = [c for c in (*REQUIRED, x) if c not in df.columns]
    if missing:
        raise UsageError(f"{where} lacks column(s) {', '.join(dict.fromkeys(missing))}; "
                         "give a CSV written by usspectrum sweep, compare or slim-stage")
    if df[x].isna().all():
        hint = "; sweep with --latency" if x == "latency_ms" else ""
        raise UsageError(f"{where} has no {x} values{hint}")


_STAGE = re.compile(r"@s(\d+)x([0-9.]+)")


def stage_series(width: str) -> str:
    """Curve name of a width string: ``uniform`` or ``stage 5 x0.6``."""
    mods = _STAGE.findall(str(width))
    if not mods:
        return "uniform"
    return " + ".join(f"stage {s} x{r}" for s, r in mods)


def series_of(df: pd.DataFrame) -> pd.Series:
    """The curve each row belongs to: the model, split by stage modifiers
    when the widths carry them (slim-stage results)."""
    models = df["model"].astype(str) if "model" in df.columns else pd.Series("spectrum", df.index)
    widths = df["width"].astype(str)
    if not widths.str.contains("@s").any():
        return models
    stages = widths.map(stage_series)
    return stages if models.nunique() == 1 else models + " " + stages


def plot_spectrum(df: pd.DataFrame, out: str | os.PathLike, *, x: str = "mflops",
                  title: str | None = None, formats: Sequence[str] = ("png", "svg"),
                  marked: dict[str, Sequence[str]] | None = None,
                  reference: Sequence[str] = ()) -> list[Path]:
    """Draw one curve per series and write ``out`` with each suffix in
    ``formats``. ``marked[series]`` lists widths drawn as large hollow
    markers (an S-Net's trained switches). ``reference`` names released
    models whose published curves (:mod:`usspectrum.io.published`) are
    drawn dashed and grey, labelled as published (MFLOPs axis only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_columns(df, "the results table", x)
    references = [published(name) for name in reference]  # unknown names fail before drawing
    if references and x != "mflops":
        raise UsageError("published curves are in MFLOPs; drop --reference or plot --x mflops")
    df = df.assign(_series=series_of(df))
    style = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
             "xtick.labelsize": 7, "ytick.labelsize": 7}
    with plt.rc_context(style):
        fig, ax = plt.subplots(figsize=(3.4, 2.6))
        for i, name in enumerate(pd.unique(df["_series"])):  # legend in row order
            rows = df[df["_series"] == name].sort_values(x)
            line, = ax.plot(rows[x], rows["top1"], marker=MARKERS[i % len(MARKERS)],
                            markersize=3, linewidth=1.1, label=name)
            wanted = set((marked or {}).get(name, ()))
            hits = rows[rows["width"].astype(str).isin(wanted)]
            if len(hits):
                ax.plot(hits[x], hits["top1"], linestyle="none", marker="o", markersize=7,
                        markerfacecolor="none", markeredgecolor=line.get_color(),
                        markeredgewidth=1.0)
        _draw_references(ax, references)
        ax.set_xlabel(X_AXES.get(x, x))
        ax.set_ylabel("Top-1 accuracy (%)")
        ax.grid(True, linewidth=0.4, alpha=0.5)
        if title:
            ax.set_title(title)
        ax.legend(loc="lower right", frameon=False)
        fig.tight_layout()
        stem = Path(out)
        stem = stem.with_suffix("") if stem.suffix.lstrip(".") in {"png", "svg", "pdf"} else stem
        written = []
        for fmt in formats:
            path = ensure_writable(stem.with_name(f"{stem.name}.{fmt}"))
            tmp = path.with_name(f".{path.name}.tmp")
            fig.savefig(tmp, dpi=200, format=fmt)
            os.replace(tmp, path)
            written.append(path)
        plt.close(fig)
    return written


REFERENCE_STYLES = (("0.35", "--"), ("0.55", ":"), ("0.2", "-."), ("0.7", "--"))


def _draw_references(ax, references: Sequence[pd.DataFrame]) -> None:
    """Published curves: grey, dashed, hollow markers, "(published)" labels."""
    for i, ref in enumerate(references):
        color, dashes = REFERENCE_STYLES[i % len(REFERENCE_STYLES)]
        rows = ref.sort_values("mflops")
        ax.plot(rows["mflops"], rows["top1"], color=color, linestyle=dashes, linewidth=1.0,
                marker="o", markersize=3, markerfacecolor="none",
                label=f"{rows['model'].iloc[0]} (published)")
