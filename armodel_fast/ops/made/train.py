"""A MADE's training forward as one autograd node on the cpp backend (docs/DESIGN.md sections 4 and 9).

The chained path (``forward._chained_forward``) runs each masked layer through its own
autograd node (``masked_linear_call``): per layer a custom ``autograd.Function``, its
checks, saved degree clones and a backward of the same weight. At MNIST's size that
Python costs about as much as a [500]-unit MADE's smallest masked product. Here the
whole chain is one node: its forward calls ``masked_linear_train_forward`` layer by
layer (NaN/inf checks and the AVX-512 products in one extension call each), its
backward ``masked_linear_train_backward`` in reverse. The values are the chained path's
bit for bit (the same kernels in the same order).

It applies to a plain MADE (no direct layer, context or residual program) whose layers
the in-place training kernels take: grad recording, fp32 CPU tensors, the AVX-512
kernels, degrees already in order (``launchers._train_reach``), outside torch.compile
and torch.func transforms. Otherwise :func:`train_chain` returns None and the caller
runs the chained path. Within it, a layer whose kernel call finds NaN/inf (forward:
x or W; backward: the gradient or the bias) takes the general path of that layer
(``functional._forward_impl`` / ``_backward_impl``: the reference's NaNs, said so), and
a backward that records a graph (``create_graph=True``) or runs batched goes through
the per-layer backward op as the chained path does.
"""
from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Optional

import torch
from torch import Tensor

from ..._validate import batched_backward, transform_active
from ..masked_linear import functional as _ml
from ..masked_linear.cache import mark_training
from ..masked_linear import launchers as _launchers
from ..masked_linear.launchers import ACTIVATIONS


class _Layer(SimpleNamespace):
    """One masked layer of the chain: degrees (cloned: a mask switch before the backward must
    not reach it), strict, activation name and the staircase the kernels read."""


class _MadeTrainChain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, layers, *params: Optional[Tensor]):
        ext = _launchers._cpp()
        h, inputs, finite = x, [], []
        for layer, w, b in zip(layers, params[0::2], params[1::2]):
            inputs.append(h)
            y, ok = ext.masked_linear_train_forward(h, w.detach(), None if b is None else b.detach(), layer.reach,
                                                    ACTIVATIONS[layer.act])
            if ok:
                mark_training(w)  # as the chained path: an (unseen, fused) optimizer step follows
            else:  # NaN/inf in h or W: this layer's general path gives the reference's NaNs
                y, ok = _ml._forward_impl(h, w, b, layer.din, layer.dout, layer.strict, layer.act, "cpp", False,
                                          False, True)
            finite.append(ok)
            h = y
        outputs = inputs[1:] + [h]  # each layer's output (post-activation): its backward reads it
        ctx.save_for_backward(*inputs, *[y if layer.act != "none" else None for layer, y in zip(layers, outputs)],
                              *params)
        ctx.layers, ctx.finite = layers, finite
        return h

    @staticmethod
    def backward(ctx, grad: Tensor):
        layers, n = ctx.layers, len(ctx.layers)
        saved = ctx.saved_tensors
        inputs, outputs, params = saved[:n], saved[n:2 * n], saved[2 * n:]
        needs = ctx.needs_input_grad
        # per layer: whether its input needs a gradient (x, or a parameter of an earlier layer)
        upstream = [needs[0]] + [needs[0] or any(needs[2:2 + 2 * i]) for i in range(1, n)]
        recorded = torch.is_grad_enabled() or batched_backward(grad)
        grads = [None] * len(params)
        for i in reversed(range(n)):
            layer, w, b = layers[i], params[2 * i], params[2 * i + 1]
            need = (upstream[i], needs[2 + 2 * i], b is not None and needs[3 + 2 * i])
            got = None
            if not recorded:
                dx, dw, db, ok = _launchers._cpp().masked_linear_train_backward(
                    grad, inputs[i], outputs[i], w.detach(), None if b is None else b.detach(), layer.reach,
                    ACTIVATIONS[layer.act], *need, not ctx.finite[i])
                got = (dx, dw, db) if ok else None
            if got is None:  # the per-layer node's backward: recorded, batched, or NaN/inf found
                run = (_ml._masked_linear_backward_op if recorded
                       else functools.partial(_ml._backward_impl, known_finite=ctx.finite[i]))
                one = SimpleNamespace(saved_tensors=(inputs[i], w, b, layer.din, layer.dout, outputs[i]),
                                      args=(layer.strict, layer.act, "cpp", False, False, b is not None),
                                      needs_input_grad=need)
                got = _ml._grads(one, grad, run)[:3]
            grad, grads[2 * i], grads[2 * i + 1] = (g if want else None for g, want in zip(got, need))
        return (grad, None, *grads)


def train_chain(x: Tensor, hidden_layers, output_layer, activation: str) -> Optional[Tensor]:
    """Raw MADE outputs [B, D*P] of ``reference.made.made_forward(x, hidden_layers, output_layer,
    activation)`` (layer tuples ``(weight, bias, in_degrees, out_degrees)``) as one autograd node,
    or None where this path does not apply (module docstring)."""
    layers = list(hidden_layers) + [output_layer]
    params = [t for w, b, _, _ in layers for t in (w, b)]
    if (not torch.is_grad_enabled() or torch.compiler.is_compiling() or transform_active() or x.dim() != 2
            or activation not in ACTIVATIONS
            or not (x.requires_grad or any(p is not None and p.requires_grad for p in params))):
        return None
    chain = []
    for i, (w, b, din, dout) in enumerate(layers):
        last = i == len(layers) - 1
        if b is not None and (b.dtype != w.dtype or b.device != w.device):
            return None
        reach = _launchers._train_reach(x, w, din, dout, last)  # (every layer's input has x's dtype and device)
        if reach is None:
            return None
        chain.append(_Layer(din=din.clone(), dout=dout.clone(), strict=last, act="none" if last else activation,
                            reach=reach))
    return _MadeTrainChain.apply(x, chain, *params)
