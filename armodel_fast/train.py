"""Kept for imports from earlier versions: the trainer lives in :mod:`armodel_fast.training`."""
from .training.checkpoint import CheckpointError
from .training.commands import evaluate, load_model
from .training.models import MODELS, build_model

__all__ = ["CheckpointError", "MODELS", "build_model", "evaluate", "load_model"]
