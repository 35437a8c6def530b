"""Kernel ops: validate once, then dispatch to the C++/Triton/CUDA kernels.

Importing an op folder registers its launchers in :mod:`armodel_fast.dispatch`.
"""
from . import nade  # noqa: F401  (nade, categorical_nade, rnade)
from . import masked_linear  # noqa: F401
from . import made  # noqa: F401  (made, fvsbn, made_sample)
