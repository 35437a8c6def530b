"""The torch custom ops of the NADE family, built from the specs.

``armodel_fast::<op>_forward`` / ``<op>_backward`` / ``<op>_sample`` take the
backend as a string argument and run ``dispatch.launcher(op, stage, backend)``;
fake impls let ``torch.compile(fullgraph=True)`` trace them, and the forward op
carries its autograd (the backward op refuses second derivatives).

Non-finite values (docs/DESIGN.md section 9): the kernels' gradients do not carry the
reference's NaN/inf (they skip terms such as ``x_d W[:, d]`` with x_d = 0, whose
``0 * inf`` the reference keeps). The backward ops therefore first check the
parameters, x and the upstream gradients (one pass over each); if one holds NaN/inf
they compute the gradients through the reference - the vector-Jacobian product
(``torch.func.vjp``) of ``spec.ref_outputs`` and ``spec.head_log_prob`` - and say so
(:func:`armodel_fast.dispatch.note_reference_backward`: a ``RuntimeWarning`` and a
count). The check runs inside the op, so compiled graphs (``torch.compile``) get it too.
"""
from __future__ import annotations

from typing import Dict, NamedTuple

import torch

from ...dispatch import launcher, note_reference_backward
from .._autograd import all_finite, forbid_double_backward
from .spec import SPECS, NadeSpec

_PARAMS = "Tensor W, Tensor c, Tensor V, Tensor b, Tensor order"
_FORWARD = f"(Tensor x, {_PARAMS}, str backend) -> (Tensor, Tensor)"
_BACKWARD = f"(Tensor grad_log_prob, Tensor? grad_outputs, Tensor x, {_PARAMS}, Tensor outputs, str backend) -> ({{}})"
_SAMPLE = f"({_PARAMS}, Tensor u, str backend) -> (Tensor, Tensor)"


class NadeOps(NamedTuple):
    forward: object   # (x, W, c, V, b, order, backend) -> (log_prob [B], outputs [B, D, ...])
    backward: object  # (grad, grad_outputs, x, W, c, V, b, order, outputs, backend) -> (dW, dc, dV, db[, dx])
    sample: object    # (W, c, V, b, order, u, backend) -> (x [n, D], log_prob [n])


def _build(spec: NadeSpec) -> NadeOps:
    n_grads = 5 if spec.x_has_grad else 4
    name = f"armodel_fast::{spec.op}"

    def forward(x, W, c, V, b, order, backend):
        return tuple(launcher(spec.op, "forward", backend)(spec, x, W, c, V, b, order))

    def backward(grad, grad_outputs, x, W, c, V, b, order, outputs, backend):
        if not all_finite(W, c, V, b, x, grad, grad_outputs):  # see the module docstring
            return _reference_backward(spec, backend, grad, grad_outputs, x, W, c, V, b, order, spec.x_has_grad)
        return tuple(launcher(spec.op, "backward", backend)(spec, grad, grad_outputs, x, W, c, V, b, order,
                                                            outputs))

    def sample(W, c, V, b, order, u, backend):
        return tuple(launcher(spec.op, "sample", backend)(spec, W, c, V, b, order, u))

    ops = NadeOps(torch.library.custom_op(f"{name}_forward", forward, mutates_args=(), schema=_FORWARD),
                  torch.library.custom_op(f"{name}_backward", backward, mutates_args=(),
                                          schema=_BACKWARD.format(", ".join(["Tensor"] * n_grads))),
                  torch.library.custom_op(f"{name}_sample", sample, mutates_args=(), schema=_SAMPLE))

    @ops.forward.register_fake
    def _(x, W, c, V, b, order, backend):
        return W.new_empty(x.shape[0]), W.new_empty(spec.output_shape(x.shape[0], spec.sizes(W, V)))

    @ops.backward.register_fake
    def _(grad, grad_outputs, x, W, c, V, b, order, outputs, backend):
        return tuple(torch.empty_like(t) for t in (W, c, V, b, x)[:n_grads])

    @ops.sample.register_fake
    def _(W, c, V, b, order, u, backend):
        return u.new_empty(u.shape[0], W.shape[1], dtype=spec.sample_dtype(W)), W.new_empty(u.shape[0])

    _attach_autograd(spec, ops)
    return ops


def _attach_autograd(spec: NadeSpec, ops: NadeOps) -> None:
    """Autograd of the forward op. A binary x that needs a gradient goes through
    :func:`_binary_backward_with_dx` (the other models: x is discrete, or dx is built in)."""
    with_dx_op = _backward_with_dx_op(spec) if spec.x_kind == "binary" else None

    def setup_context(ctx, inputs, output):
        x, W, c, V, b, order, backend = inputs
        ctx.save_for_backward(x, W, c, V, b, order, output[1])
        ctx.backend = backend

    def backward(ctx, grad_log_prob, grad_outputs):
        x, W, c, V, b, order, outputs = ctx.saved_tensors
        if grad_log_prob is None:
            grad_log_prob = outputs.new_zeros(outputs.shape[0])
        need = ctx.needs_input_grad
        with_dx = spec.x_has_grad or (need[0] and spec.x_kind == "binary")
        run = ops.backward if spec.x_has_grad or not with_dx else with_dx_op
        grads = run(grad_log_prob.contiguous(), None if grad_outputs is None else grad_outputs.contiguous(),
                    x, W, c, V, b, order, outputs, ctx.backend)
        dx = grads[4] if with_dx else None
        if order.shape[0] == 1:  # D = 1: no step reads W (the reference leaves its gradient None)
            need = (need[0], False) + tuple(need[2:])
        return tuple(g if need[i] else None for i, g in enumerate((dx,) + tuple(grads[:4]))) + (None, None)

    ops.forward.register_autograd(backward, setup_context=setup_context)
    forbid_double_backward(ops.backward, "NADE")


def _reference_backward(spec: NadeSpec, backend: str, grad, grad_outputs, x, W, c, V, b, order, with_dx: bool):
    """(dW, dc, dV, db[, dx]) of ``sum(grad * log_prob) + sum(grad_outputs * outputs)`` as the
    reference's autograd computes them (``torch.func.vjp``, which runs inside a custom op):
    the backward ops' NaN/inf path. An all-zero ``grad`` counts as none (the forward op's
    autograd passes zeros when only the outputs are used), so that log_prob's own NaN/inf
    partials do not enter through ``0 * NaN``."""
    note_reference_backward(spec.op, backend)
    with_lp = bool(grad.any()) or grad_outputs is None

    def fn(W, c, V, b, *xs):
        xin = xs[0] if with_dx else x
        outputs = spec.ref_outputs(xin, W, c, V, b, order)
        roots = (spec.head_log_prob(outputs, xin).sum(-1),) if with_lp else ()
        return roots + ((outputs,) if grad_outputs is not None else ())

    _, vjp = torch.func.vjp(fn, W, c, V, b, *((x,) if with_dx else ()))
    seeds = ((grad,) if with_lp else ()) + ((grad_outputs,) if grad_outputs is not None else ())
    return tuple(vjp(seeds))


def _backward_with_dx_op(spec: NadeSpec):
    """``armodel_fast::<op>_backward_with_dx``: (dW, dc, dV, db, dx) for a binary x that needs a
    gradient: :func:`_binary_backward_with_dx`, or the reference's with NaN/inf values."""
    def impl(grad, grad_outputs, x, W, c, V, b, order, outputs, backend):
        if not all_finite(W, c, V, b, x, grad, grad_outputs):
            return _reference_backward(spec, backend, grad, grad_outputs, x, W, c, V, b, order, True)
        return _binary_backward_with_dx(grad, grad_outputs, x, W, c, V, b, order, outputs, backend)

    op = torch.library.custom_op(f"armodel_fast::{spec.op}_backward_with_dx", impl, mutates_args=(),
                                 schema=_BACKWARD.format(", ".join(["Tensor"] * 5)))

    @op.register_fake
    def _(grad, grad_outputs, x, W, c, V, b, order, outputs, backend):
        return tuple(torch.empty_like(t) for t in (W, c, V, b, x))

    forbid_double_backward(op, "NADE")
    return op


def _binary_backward_with_dx(grad_log_prob, grad_logits, x, W, c, V, b, order, logits, backend):
    """(dW, dc, dV, db, dx), for a binary x that needs a gradient: through the RNADE backward
    kernels, whose recurrence ``a += x_d W[:, d]`` is NADE's, with K = 1 and the logit as the
    first mixture output (V, b padded with zeros). The Bernoulli head's gradient enters as the
    upstream gradient of that output: ``d/dlogit = g_lp (x - sigmoid(logit)) + g_logits``; its
    direct term ``d(x logit)/dx = g_lp logit`` is added to dx here."""
    B, (D, H) = x.shape[0], V.shape
    g = grad_log_prob[:, None] * (x - torch.sigmoid(logits))
    if grad_logits is not None:
        g = g + grad_logits
    Vr, br = V.new_zeros(D, 3, 1, H), b.new_zeros(D, 3, 1)
    gr, pr = g.new_zeros(B, D, 3, 1), logits.new_zeros(B, D, 3, 1)
    Vr[:, 0, 0], br[:, 0, 0], gr[..., 0, 0], pr[..., 0, 0] = V, b, g, logits
    dW, dc, dV, db, dx = launcher("rnade", "backward", backend)(SPECS["rnade"], grad_log_prob.new_zeros(B), gr, x,
                                                                 W, c, Vr, br, order, pr)
    return dW, dc, dV[:, 0, 0], db[:, 0, 0], dx + grad_log_prob[:, None] * logits


OPS: Dict[str, NadeOps] = {op: _build(spec) for op, spec in SPECS.items()}
