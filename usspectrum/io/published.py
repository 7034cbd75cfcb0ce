"""The authors' published spectra, shipped as data (``usspectrum/data/published.csv``):
per-width MFLOPs and top-1 on ImageNet of every network they released, from
MODEL_ZOO.md and README.md of JiahuiYu/slimmable_networks."""
from __future__ import annotations

import functools
import io
from importlib import resources

import pandas as pd

from ..errors import UsageError

COLUMNS = ["model", "width", "mflops", "top1"]


@functools.lru_cache(maxsize=1)
def _table() -> pd.DataFrame:
    text = resources.files("usspectrum").joinpath("data/published.csv").read_text()
    return pd.read_csv(io.StringIO(text), comment="#", dtype={"width": str})


def published_models() -> list[str]:
    """Names of the released models with published numbers."""
    return list(dict.fromkeys(_table()["model"]))


def published(model: str | None = None) -> pd.DataFrame:
    """The published points (``model``, ``width``, ``mflops``, ``top1`` =
    100 - top-1 error, ``source``) of ``model``, or of every release."""
    table = _table()
    if model is None:
        return table.copy()
    if model not in set(table["model"]):
        raise UsageError(f"no published numbers for {model!r}; known: "
                         f"{', '.join(published_models())}")
    return table[table["model"] == model].reset_index(drop=True)
