"""masked_linear: ``act(x @ (W * M).T + bias)`` with the mask computed from degrees
(see :mod:`.functional` for the chain and the cache contract)."""
from .cache import cache_info, caching, clear_cache
from .functional import _masked_linear_op, auto_work, degrees_sorted, fresh_weights, masked_linear, masked_linear_call
from .launchers import (ACTIVATIONS, MAX_BLOCKS, Prepared, SortedWeights, TritonPrepared, prepare, prepare_sorted,
                        prepare_triton)

__all__ = ["ACTIVATIONS", "MAX_BLOCKS", "Prepared", "SortedWeights", "TritonPrepared", "cache_info", "caching",
           "clear_cache", "fresh_weights", "masked_linear", "prepare", "prepare_sorted", "prepare_triton"]
