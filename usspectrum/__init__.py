"""usspectrum: FLOPs-accuracy spectra of universally slimmable networks."""
from __future__ import annotations

import torch.nn as nn

from .spectrum.calibration import calibrate
from .spectrum.calibrate import calibrate_checkpoint
from .io.checkpoint import load_checkpoint, save_checkpoint
from .io.data import ImageSpec
from .errors import USSpectrumError, UsageError
from .spectrum.evaluate import evaluate
from .io.plot import plot_spectrum
from .io.published import published
from .spectrum.sweep import SweepSettings, sweep
from .training.config import TrainConfig
from .training.loop import train
from .spectrum.flops import Cost, FlopCounter, count_flops
from .spectrum.search import SearchSettings, search
from .models import create_model, list_models, register_model
from .nn.width import WidthConfig, WidthLike, make_divisible, parse_width_list

__version__ = "0.1.0"


def set_width(model: nn.Module, width: WidthLike) -> WidthConfig:
    """Make ``model`` run at ``width``: a float, a :class:`WidthConfig` or its
    string form (``"0.75@s5x0.6"``). Returns the config applied."""
    if not hasattr(model, "set_width"):
        raise UsageError(f"{type(model).__name__} is not a slimmable usspectrum model")
    return model.set_width(width)


__all__ = [
    "Cost", "FlopCounter", "ImageSpec", "SweepSettings", "USSpectrumError", "UsageError",
    "WidthConfig", "calibrate", "calibrate_checkpoint", "count_flops", "create_model",
    "evaluate", "list_models", "load_checkpoint", "make_divisible", "parse_width_list",
    "plot_spectrum", "published", "register_model", "save_checkpoint", "set_width", "sweep",
    "TrainConfig", "train", "SearchSettings", "search",
]
