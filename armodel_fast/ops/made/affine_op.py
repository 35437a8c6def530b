"""``armodel_fast::made_affine_sample``: the affine MADE inverse as one custom op.

``torch.compile`` cannot trace into the one-pass samplers (their weight
preparation calls the extension, caches, checks degree orders by value), so
under compilation ``MADE.inverse`` without gradients calls this op: one node in
the graph, with a fake implementation that gives the output shapes. Outside
compilation the model calls :func:`armodel_fast.ops.made.made_sample` directly.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import sample as _made


@torch.library.custom_op("armodel_fast::made_affine_sample", mutates_args=())
def made_affine_sample(weights: List[Tensor], biases: List[Tensor], in_degrees: List[Tensor],
                       out_degrees: List[Tensor], direct: List[Tensor], order: Tensor, z: Tensor,
                       context: Optional[Tensor], context_weights: List[Tensor], head: str, activation: str,
                       backend: str) -> Tuple[Tensor, Tensor]:
    """(x [n, D], log|det dx/dz| [n]) of ``ops.made.made_sample(..., head)`` for an affine head.

    The layer lists hold the hidden layers then the output layer; ``direct`` is
    ``[weight, in_degrees, out_degrees]`` or empty; ``context_weights`` ``[Wc_hidden,
    Wc_out]`` or empty.
    """
    layers = list(zip(weights, biases, in_degrees, out_degrees))
    x, logdet = _made.made_sample(layers[:-1], layers[-1], order, z, head, None, activation,
                                  tuple(direct) if direct else None, context,
                                  tuple(context_weights) if context_weights else None, backend=backend)
    return x.clone() if x is z else x, logdet


@made_affine_sample.register_fake
def _(weights, biases, in_degrees, out_degrees, direct, order, z, context, context_weights, head, activation,
      backend):
    dtype = weights[-1].dtype
    return z.new_empty(z.shape, dtype=dtype), z.new_empty(z.shape[:1], dtype=dtype)
