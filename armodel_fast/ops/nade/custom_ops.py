"""The torch custom ops of the NADE family, built from the specs.

``armodel_fast::<op>_forward`` / ``<op>_backward`` / ``<op>_sample`` take the
backend as a string argument and run ``dispatch.launcher(op, stage, backend)``;
fake impls let ``torch.compile(fullgraph=True)`` trace them, and the forward op
carries its autograd (the backward op refuses second derivatives).

Non-finite values (docs/DESIGN.md section 9): the kernels' gradients do not carry the
reference's NaN/inf (they skip terms such as ``x_d W[:, d]`` with x_d = 0, whose
``0 * inf`` the reference keeps). An eager backward therefore first checks the
parameters, x and the upstream gradients (one pass over each); if one holds NaN/inf it
computes the gradients through the reference - the autograd of ``spec.ref_outputs`` and
``spec.head_log_prob`` - and says so (:func:`armodel_fast.dispatch.note_reference_backward`:
a ``RuntimeWarning`` and a count). A backward compiled by ``torch.compile`` cannot run the
reference: its backward op refuses NaN/inf parameters with a ``ValueError``.
"""
from __future__ import annotations

from typing import Dict, NamedTuple

import torch

from ...dispatch import launcher, note_reference_backward
from .._autograd import all_finite, forbid_double_backward, refuse_nonfinite_compiled
from .spec import SPECS, NadeSpec

_PARAMS = "Tensor W, Tensor c, Tensor V, Tensor b, Tensor order"
_FORWARD = f"(Tensor x, {_PARAMS}, str backend) -> (Tensor, Tensor)"
_BACKWARD = (f"(Tensor grad_log_prob, Tensor? grad_outputs, Tensor x, {_PARAMS}, Tensor outputs, str backend, "
             f"bool compiled=False) -> ({{}})")
_SAMPLE = f"({_PARAMS}, Tensor u, str backend) -> (Tensor, Tensor)"


class NadeOps(NamedTuple):
    forward: object   # (x, W, c, V, b, order, backend) -> (log_prob [B], outputs [B, D, ...])
    backward: object  # (grad, grad_outputs, x, W, c, V, b, order, outputs, backend[, compiled]) -> (dW, dc, dV, db[, dx])
    sample: object    # (W, c, V, b, order, u, backend) -> (x [n, D], log_prob [n])


def _build(spec: NadeSpec) -> NadeOps:
    n_grads = 5 if spec.x_has_grad else 4
    name = f"armodel_fast::{spec.op}"

    def forward(x, W, c, V, b, order, backend):
        return tuple(launcher(spec.op, "forward", backend)(spec, x, W, c, V, b, order))

    def backward(grad, grad_outputs, x, W, c, V, b, order, outputs, backend, compiled=False):
        if compiled:  # traced by torch.compile: no reference to fall back on (see the module docstring)
            refuse_nonfinite_compiled(spec.op, backend, W, c, V, b)
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
    def _(grad, grad_outputs, x, W, c, V, b, order, outputs, backend, compiled=False):
        return tuple(torch.empty_like(t) for t in (W, c, V, b, x)[:n_grads])

    @ops.sample.register_fake
    def _(W, c, V, b, order, u, backend):
        return u.new_empty(u.shape[0], W.shape[1], dtype=spec.sample_dtype(W)), W.new_empty(u.shape[0])

    _attach_autograd(spec, ops)
    return ops


def _attach_autograd(spec: NadeSpec, ops: NadeOps) -> None:
    """Autograd of the forward op. A binary x that needs a gradient goes through
    :func:`_binary_backward_with_dx` (the other models: x is discrete, or dx is built in)."""
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
        grad_outputs = None if grad_outputs is None else grad_outputs.contiguous()
        compiled = torch.compiler.is_compiling()
        if not compiled and not all_finite(W, c, V, b, x, grad_log_prob, grad_outputs):
            grads = _reference_backward(spec, ctx.backend, grad_log_prob, grad_outputs, x, W, c, V, b, order, with_dx)
        else:
            run = ops.backward if spec.x_has_grad or not with_dx else _binary_backward_with_dx
            grads = run(grad_log_prob.contiguous(), grad_outputs, x, W, c, V, b, order, outputs, ctx.backend,
                        compiled)
        dx = grads[4] if with_dx else None
        return tuple(g if need[i] else None for i, g in enumerate((dx,) + tuple(grads[:4]))) + (None, None)

    ops.forward.register_autograd(backward, setup_context=setup_context)
    forbid_double_backward(ops.backward, "NADE")


def _reference_backward(spec: NadeSpec, backend: str, grad, grad_outputs, x, W, c, V, b, order, with_dx: bool):
    """(dW, dc, dV, db[, dx]) of ``sum(grad * log_prob) + sum(grad_outputs * outputs)`` by the
    reference's autograd: the backward's NaN/inf path (see the module docstring)."""
    note_reference_backward(spec.op, backend)
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in ((W, c, V, b, x) if with_dx else (W, c, V, b))]
        xin = leaves[4] if with_dx else x
        outputs = spec.ref_outputs(xin, *leaves[:4], order)
        roots, seeds = [spec.head_log_prob(outputs, xin).sum(-1)], [grad]
        if grad_outputs is not None:
            roots.append(outputs)
            seeds.append(grad_outputs)
        grads = torch.autograd.grad(roots, leaves, seeds, allow_unused=True)
    return tuple(torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads))


def _binary_backward_with_dx(grad_log_prob, grad_logits, x, W, c, V, b, order, logits, backend, compiled=False):
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
    dW, dc, dV, db, dx = OPS["rnade"].backward(grad_log_prob.new_zeros(B), gr, x, W, c, Vr, br, order, pr, backend,
                                               compiled)
    return dW, dc, dV[:, 0, 0], db[:, 0, 0], dx + grad_log_prob[:, None] * logits


OPS: Dict[str, NadeOps] = {op: _build(spec) for op, spec in SPECS.items()}
