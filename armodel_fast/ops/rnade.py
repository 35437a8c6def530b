"""RNADE ops; they live in :mod:`armodel_fast.ops.nade` (this path is kept for callers)."""
from .nade import rnade_log_prob, rnade_sample  # noqa: F401
