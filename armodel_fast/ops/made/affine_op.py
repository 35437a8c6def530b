"""``armodel_fast::made_affine_sample``: the affine MADE inverse as one custom op, with gradients.

The fast backends' ``MADE.inverse`` is this op whenever it records a graph or runs under
``torch.compile``: one node in the graph (``torch.compile`` cannot trace into the
one-pass samplers: their weight preparation calls the extension and caches), with a fake
implementation giving the output shapes, and an autograd formula whose backward is the
opaque op ``made_affine_sample_backward`` (``inverse_grad.affine_inverse_backward``: one
reverse sweep over the degrees, then the masked products of each layer). Without a graph,
outside compilation, the model calls :func:`armodel_fast.ops.made.made_sample` directly.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ..._validate import batched_backward
from . import sample as _made
from .inverse_grad import affine_inverse_backward


def encode_program(program) -> str:
    """The hidden layers' flags as the ops take them: ``"0,3,4"``, or ``""`` for None (a plain MADE)."""
    return "" if program is None else ",".join(str(int(f)) for f in program)


def decode_program(text: str):
    try:
        return [int(f) for f in text.split(",")] if text else None
    except ValueError:
        raise ValueError(f"program must be comma-separated flag sets such as '0,3,4', got {text!r}") from None


@torch.library.custom_op("armodel_fast::made_affine_sample", mutates_args=())
def made_affine_sample(weights: List[Tensor], biases: List[Tensor], in_degrees: List[Tensor],
                       out_degrees: List[Tensor], direct: List[Tensor], order: Tensor, z: Tensor,
                       context: Optional[Tensor], context_weights: List[Tensor], head: str, activation: str,
                       backend: str, program: str) -> Tuple[Tensor, Tensor]:
    """(x [n, D], log|det dx/dz| [n]) of ``ops.made.made_sample(..., head)`` for an affine head.

    The layer lists hold the hidden layers then the output layer; ``direct`` is
    ``[weight, in_degrees, out_degrees]`` or empty; ``context_weights`` ``[Wc_hidden,
    Wc_out]`` or empty; ``program`` the hidden layers' flags (``reference.made.layer_program``)
    as :func:`encode_program` writes them ("" for a plain MADE).
    """
    layers = list(zip(weights, biases, in_degrees, out_degrees))
    x, logdet = _made.made_sample(layers[:-1], layers[-1], order, z, head, None, activation,
                                  tuple(direct) if direct else None, context,
                                  tuple(context_weights) if context_weights else None, backend=backend,
                                  program=decode_program(program))
    return x.clone() if x is z else x, logdet


@made_affine_sample.register_fake
def _(weights, biases, in_degrees, out_degrees, direct, order, z, context, context_weights, head, activation,
      backend, program):
    dtype = weights[-1].dtype
    return z.new_empty(z.shape, dtype=dtype), z.new_empty(z.shape[:1], dtype=dtype)


@torch.library.custom_op("armodel_fast::made_affine_sample_backward", mutates_args=())
def made_affine_sample_backward(weights: List[Tensor], biases: List[Tensor], in_degrees: List[Tensor],
                                out_degrees: List[Tensor], direct: List[Tensor], z: Tensor,
                                context: Optional[Tensor], context_weights: List[Tensor], x: Tensor, gx: Tensor,
                                gl: Tensor, head: str, activation: str, program: str) -> List[Tensor]:
    """Gradients of :func:`made_affine_sample`, flat: weights, biases, the direct weight (if
    any), z, context (if any), the context weights (if any; zeros where a weight is unused)."""
    layers = list(zip(weights, biases, in_degrees, out_degrees))
    g = affine_inverse_backward(layers[:-1], layers[-1], tuple(direct) if direct else None, x, z, gx, gl,
                                activation, head == "affine", context, context_weights or None, decode_program(program))
    flat = list(g["weights"]) + list(g["biases"])
    if direct:
        flat.append(g["direct"])
    flat.append(g["z"])
    if context is not None:
        flat.append(g["context"])
        flat += [torch.zeros_like(w) if gw is None else gw for w, gw in zip(context_weights, g["context_weights"])]
    return flat


@made_affine_sample_backward.register_fake
def _(weights, biases, in_degrees, out_degrees, direct, z, context, context_weights, x, gx, gl, head, activation,
      program):
    flat = [torch.empty_like(t) for t in list(weights) + list(biases)]
    if direct:
        flat.append(torch.empty_like(direct[0]))
    flat.append(torch.empty_like(z))
    if context is not None:
        flat += [torch.empty_like(context)] + [torch.empty_like(w) for w in context_weights]
    return flat


def _setup_context(ctx, inputs, output):
    weights, biases, in_degrees, out_degrees, direct, _, z, context, context_weights, head, activation, _, program = \
        inputs
    # Degrees are cloned: MADE rewrites its degree buffers in place when it switches masks, and
    # the backward must use the forward's masks.
    n = len(weights)
    ctx.sizes = (n, len(direct), context is not None, len(context_weights))
    ctx.args = (head, activation, program)
    ctx.save_for_backward(*weights, *biases, *(d.clone() for d in in_degrees), *(d.clone() for d in out_degrees),
                          *(direct[:1]), *(d.clone() for d in direct[1:]), z, context, *context_weights, output[0])


def _backward(ctx, gx, gl):
    if torch.is_grad_enabled():  # create_graph=True: the gradients below would not be differentiable
        raise NotImplementedError(
            "second-order gradients (create_graph=True) through MADE.inverse on the fast backends are not "
            "implemented; use backend='reference' for them")
    if batched_backward(gx) or batched_backward(gl):
        raise NotImplementedError(
            "batched gradients (autograd.grad(..., is_grads_batched=True), vmap over a backward) through "
            "MADE.inverse on the fast backends are not implemented; use backend='reference' for them")
    n, n_direct, has_context, n_ctx_w = ctx.sizes
    saved = list(ctx.saved_tensors)
    take = lambda k: [saved.pop(0) for _ in range(k)]  # noqa: E731
    weights, biases, din, dout, direct = take(n), take(n), take(n), take(n), take(n_direct)
    z, context = saved.pop(0), saved.pop(0)
    context_weights, x = take(n_ctx_w), saved.pop(0)
    gx = torch.zeros_like(x) if gx is None else gx
    gl = x.new_zeros(x.shape[0]) if gl is None else gl
    flat = made_affine_sample_backward(weights, biases, din, dout, direct, z, context, context_weights, x, gx, gl,
                                       *ctx.args)
    g_weights, g_biases = flat[:n], flat[n:2 * n]
    rest = flat[2 * n:]
    g_direct = [rest.pop(0), None, None] if n_direct else []
    g_z = rest.pop(0)
    g_context = rest.pop(0) if has_context else None
    g_ctx_w = rest if has_context else []
    return (g_weights, g_biases, [None] * n, [None] * n, g_direct, None, g_z, g_context, g_ctx_w, None, None, None,
            None)


made_affine_sample.register_autograd(_backward, setup_context=_setup_context)
