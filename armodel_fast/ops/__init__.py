"""Kernel ops: validate, then dispatch to the C++/Triton/CUDA kernels.

Importing an op module registers the backends it implements with
``armodel_fast._backend`` (only those whose extension actually loaded).
"""
from . import nade  # noqa: F401,E402  (registers nade)
from . import masked_linear  # noqa: F401,E402  (registers masked_linear)
from . import made  # noqa: F401,E402  (registers made, fvsbn)
from . import categorical_nade  # noqa: F401,E402  (registers categorical_nade)
from . import rnade  # noqa: F401,E402  (registers rnade)
from ._nade_gpu import register as _register_nade_gpu  # noqa: E402

_register_nade_gpu()  # triton and cuda launchers for the NADE ops
