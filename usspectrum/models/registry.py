"""Model registry: builders registered by name, created with ``create_model``."""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch.nn as nn

from ..errors import UsageError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: make ``fn`` creatable as ``create_model(fn.__name__)``."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; the name and kwargs are recorded on it as
    ``model.arch = {"name": ..., "kwargs": ...}`` so a checkpoint can rebuild it."""
    if name not in _MODELS:
        raise UsageError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    try:
        model = _MODELS[name](**kwargs)
    except TypeError as exc:
        raise UsageError(f"bad arguments for model {name!r}: {exc}") from None
    model.arch = {"name": name, "kwargs": dict(kwargs)}
    return model


def model_defaults(name: str) -> dict[str, Any]:
    """The keyword defaults of builder ``name`` (its family's width range,
    switches, ...)."""
    if name not in _MODELS:
        raise UsageError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return {k: p.default for k, p in inspect.signature(_MODELS[name]).parameters.items()
            if p.default is not inspect.Parameter.empty}
