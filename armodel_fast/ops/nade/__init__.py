"""The NADE family (binary NADE, categorical NADE, RNADE): one spec per model
(``spec.py``), one set of launchers (``launchers.py``), custom ops built from the
specs (``custom_ops.py``) and the public functions (``functional.py``)."""
from . import launchers  # noqa: F401  (fills the dispatch table)
from .custom_ops import OPS
from .functional import (categorical_nade_log_prob, categorical_nade_sample, log_prob, nade_log_prob, nade_sample,
                         rnade_log_prob, rnade_sample, sample)
from .spec import SPECS, NadeSpec

__all__ = ["OPS", "SPECS", "NadeSpec", "categorical_nade_log_prob", "categorical_nade_sample", "log_prob",
           "nade_log_prob", "nade_sample", "rnade_log_prob", "rnade_sample", "sample"]
