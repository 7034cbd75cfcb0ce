"""Model families. Importing this package registers every builder."""
from . import autoslim, mobilenet_v1, mobilenet_v2, resnet, shufflenet  # noqa: F401  (register builders)
from .base import KINDS, SlimmableNet
from .registry import create_model, list_models, model_defaults, register_model

__all__ = ["KINDS", "SlimmableNet", "create_model", "list_models", "model_defaults", "register_model"]
