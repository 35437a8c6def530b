"""Categorical NADE ops; they live in :mod:`armodel_fast.ops.nade` (this path is kept for callers)."""
from .nade import categorical_nade_log_prob, categorical_nade_sample  # noqa: F401
