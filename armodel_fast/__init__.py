"""armodel-fast: fused kernels for autoregressive density models (FVSBN, NADE, MADE).

    import armodel_fast as af
    model = af.NADE(D=64, H=128, backend="auto")
    nll = -model.log_prob(x).mean()
    af.backends()          # which backends exist here, and why not
"""
from . import ops  # noqa: F401  (fills the dispatch table)
from .dispatch import BACKENDS, BackendUnavailableError, backends, explain
from . import nn as _nn
from .nn import *  # noqa: F401,F403  (every module: nn.__all__)
from .ops.masked_linear import cache_info, caching, clear_cache

__version__ = "0.1.0"

__all__ = sorted({*_nn.__all__, "BACKENDS", "BackendUnavailableError", "backends", "cache_info", "caching",
                  "clear_cache", "explain"})
