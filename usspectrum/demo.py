"""``usspectrum demo``: the whole story on a data set that ships with the
dependencies (scikit-learn's 8x8 handwritten digits, upscaled to 16x16).

Trains a nonuniform US-Net, a 4-switch S-Net and an individual net, then
compares their spectra (Figure 2) and slims single stages of the US-Net
(Figure 1). Each step resumes if its output already exists.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .spectrum.compare import compare, slim_stage
from .spectrum.sweep import SweepSettings
from .training.config import TrainConfig
from .training.loop import train

DATA = "digits"
IMAGE_SIZE = 16
WIDTHS = "0.25:1.0:0.05"
STAGE_WIDTHS = "0.25:1.0:0.125"
REPEATS = (1, 1, 1, 1, 1)  # one block per stage: a small MobileNet v1 that trains in minutes


def demo_recipe(kind: str, out: Path, epochs: int, progress: bool) -> TrainConfig:
    return TrainConfig(kind=kind, data=DATA, out=str(out), epochs=epochs, batch_size=32,
                       lr=0.02, weight_decay=5e-5, warmup_epochs=1.0, image_size=IMAGE_SIZE,
                       repeats=REPEATS,
                       flip=False, nonuniform=kind == "us", val_images=None, calib_images=300,
                       eval_every=epochs, resume=out.exists(), progress=progress)


def run_demo(out_dir: str | os.PathLike = "usspectrum-demo", epochs: int = 15,
             progress: bool = True) -> dict[str, pd.DataFrame]:
    """Train the three models and write ``compare.csv/png/svg`` and
    ``slim-stage.csv/png/svg`` into ``out_dir``."""
    out = Path(out_dir)
    paths = {kind: out / f"{name}.pt" for kind, name in
             (("us", "us-nonuniform"), ("slimmable", "s-net-4switch"), ("individual", "individual"))}
    for kind, path in paths.items():
        train(demo_recipe(kind, path, epochs, progress))
    settings = SweepSettings(calib_images=600, batch_size=150,
                             progress=progress, workers=0)
    figure2 = compare(list(paths.values()), DATA, WIDTHS, out, settings)
    figure1 = slim_stage(paths["us"], DATA, [1, 4, 5], 0.6, STAGE_WIDTHS,
                         out / "slim-stage.csv", settings)
    return {"compare": figure2, "slim_stage": figure1}
