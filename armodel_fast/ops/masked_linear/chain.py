"""A chain of masked layers in training as one autograd node on the cpp backend (docs/DESIGN.md
sections 4 and 9): one layer (:func:`~.functional.masked_linear`) or a MADE's layers
(``ops/made/forward.py``).

Through ``masked_linear_call`` each layer is its own autograd node: a custom
``autograd.Function`` with its launcher lookups and checks in each direction. At MNIST's size that Python costs about as much as a
[500]-unit MADE's smallest masked product. Here the whole chain is one node: its forward
calls ``masked_linear_train_forward`` layer by layer (NaN/inf checks and the AVX-512
products in one extension call each), its backward ``masked_linear_train_backward`` in
reverse. The values are those of ``masked_linear_call`` bit for bit (the same kernels in
the same order).

It applies where every layer takes the in-place training kernels: grad recording, fp32
CPU tensors, the AVX-512 kernels (in any degree order: ``launchers._train_plan``),
outside torch.compile and torch.func transforms. Otherwise :func:`masked_chain` returns
None and the caller runs each layer through ``masked_linear_call``. Within it, a layer
whose kernel call finds NaN/inf (forward: x or W; backward: the gradient or the bias)
takes that layer's general path (``functional._forward_impl`` / ``_backward_impl``: the
reference's NaNs, said so), and a backward that records a graph (``create_graph=True``)
or runs batched goes through the per-layer backward op as ``masked_linear_call`` does.
"""
from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Optional

import torch
from torch import Tensor

from ..._validate import batched_backward, transform_active
from ...dispatch import register
from . import launchers as _launchers
from .cache import mark_training
from .launchers import ACTIVATIONS


class _Layer(SimpleNamespace):
    """One masked layer of the chain: degrees (cloned: a mask switch before the backward must
    not reach it), strict, activation name, and the staircase and degree sorts the kernels read
    (``launchers.Plan``: memoised on the degree values, so a mask switch does not change them)."""


class _MaskedChain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, layers, *params: Optional[Tensor]):
        ext = _launchers._cpp()
        h, inputs, finite = x, [], []
        for layer, w, b in zip(layers, params[0::2], params[1::2]):
            inputs.append(h)
            y, ok = ext.masked_linear_train_forward(h, w.detach(), None if b is None else b.detach(), layer.reach,
                                                    ACTIVATIONS[layer.act], *layer.orders)
            if ok:
                mark_training(w)  # as the chained path: an (unseen, fused) optimizer step follows
            else:  # NaN/inf in h or W: this layer's general path gives the reference's NaNs
                from . import functional as _ml  # (functional imports this module)
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
                    ACTIVATIONS[layer.act], *need, not ctx.finite[i], *layer.orders)
                got = (dx, dw, db) if ok else None
                if ok:
                    mark_training(w)  # as the per-layer backward: an (unseen, fused) optimizer step may follow
            if got is None:  # the per-layer node's backward: recorded, batched, or NaN/inf found
                from . import functional as _ml  # (functional imports this module)
                run = (_ml._masked_linear_backward_op if recorded
                       else functools.partial(_ml._backward_impl, known_finite=ctx.finite[i]))
                one = SimpleNamespace(saved_tensors=(inputs[i], w, b, layer.din, layer.dout, outputs[i]),
                                      args=(layer.strict, layer.act, "cpp", False, False, b is not None),
                                      needs_input_grad=need)
                got = _ml._grads(one, grad, run)[:3]
            grad, grads[2 * i], grads[2 * i + 1] = (g if want else None for g, want in zip(got, need))
            if not upstream[i]:  # nothing before this layer needs a gradient (x and earlier layers frozen)
                break
        return (grad, None, *grads)


@register("masked_linear", "train_chain", "cpp", requires="masked_linear_train_forward", optional=True)
def masked_chain(x: Tensor, layers) -> Optional[Tensor]:
    """``act_n(... act_1(x @ (W_1 * M_1).T + b_1) ...)`` for x [B, in] and layers
    ``(weight, bias or None, in_degrees, out_degrees, strict, activation)``, as one autograd
    node; None where this path does not apply (module docstring)."""
    params = [t for w, b, *_ in layers for t in (w, b)]
    if (not torch.is_grad_enabled() or torch.compiler.is_compiling() or transform_active() or x.dim() != 2
            or not (x.requires_grad or any(p is not None and p.requires_grad for p in params))):
        return None
    chain = []
    for w, b, din, dout, strict, act in layers:
        if act not in ACTIVATIONS or (b is not None and (b.dtype != w.dtype or b.device != w.device)):
            return None
        p = _launchers._train_plan(x, w, din, dout, strict)  # (every layer's input has x's dtype and device)
        if p is None:
            return None
        chain.append(_Layer(din=din.clone(), dout=dout.clone(), strict=strict, act=act, reach=p.row_reach,
                            orders=_launchers.train_orders(p)))
    return _MaskedChain.apply(x, chain, *params)
