"""Binary NADE ops (DESIGN.md section 2): :func:`nade_log_prob`, :func:`nade_sample`.

Chain (STYLE.md): C++ kernels ``nade_{forward,backward,sample}`` (csrc/nade_cpu.cpp)
-> torch custom ops ``armodel_fast::nade_forward`` / ``nade_backward`` /
``nade_sample`` (fake impls and autograd, so ``torch.compile(fullgraph=True)``
traces them without graph breaks; the backend is a string argument of the op)
-> these functions (validation, ``backend=``) -> ``armodel_fast.nn.NADE``.

Parameters ``W [H, D]``, ``c [H]``, ``V [D, H]``, ``b [D]``, ``order`` a
permutation (step t models dimension ``order[t]``); logits in dimension space.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..reference import nade as _ref
from ..reference.heads import bernoulli_log_prob
from . import _nade_common as _c

_MODEL = "nade"


# ---- custom ops -----------------------------------------------------------------

@torch.library.custom_op("armodel_fast::nade_forward", mutates_args=())
def _forward_op(x: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor, order: Tensor,
                backend: str) -> Tuple[Tensor, Tensor]:
    """(log_prob [B], logits [B, D])."""
    return tuple(_c.kernel(_MODEL, "forward", backend)(x, W, c, V, b, order))


@_forward_op.register_fake
def _(x, W, c, V, b, order, backend):
    return W.new_empty(x.shape[0]), W.new_empty(x.shape[0], W.shape[1])


@torch.library.custom_op("armodel_fast::nade_backward", mutates_args=())
def _backward_op(grad_log_prob: Tensor, grad_logits: Optional[Tensor], x: Tensor, W: Tensor, c: Tensor,
                 V: Tensor, b: Tensor, order: Tensor, logits: Tensor,
                 backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dW, dc, dV, db) of ``sum(grad_log_prob * log_prob) + sum(grad_logits * logits)``."""
    return tuple(_c.kernel(_MODEL, "backward", backend)(grad_log_prob, grad_logits, x, W, c, V, b, order, logits))


@_backward_op.register_fake
def _(grad_log_prob, grad_logits, x, W, c, V, b, order, logits, backend):
    return torch.empty_like(W), torch.empty_like(c), torch.empty_like(V), torch.empty_like(b)


@torch.library.custom_op("armodel_fast::nade_sample", mutates_args=())
def _sample_op(W: Tensor, c: Tensor, V: Tensor, b: Tensor, order: Tensor, u: Tensor,
               backend: str) -> Tuple[Tensor, Tensor]:
    """(x [n, D], log_prob [n]) from uniforms u [n, D]."""
    return tuple(_c.kernel(_MODEL, "sample", backend)(W, c, V, b, order, u))


@_sample_op.register_fake
def _(W, c, V, b, order, u, backend):
    return W.new_empty(u.shape[0], W.shape[1]), W.new_empty(u.shape[0])


def _backward_with_dx(grad_log_prob, grad_logits, x, W, c, V, b, order, logits, backend):
    """(dW, dc, dV, db, dx), for a binary x that needs a gradient: through the RNADE backward
    kernels, whose recurrence ``a += x_d W[:, d]`` is NADE's, with K = 1 and the logit as the
    first mixture output (V, b padded with zeros). The Bernoulli head's gradient enters as the
    upstream gradient of that output: ``d/dlogit = g_lp (x - sigmoid(logit)) + g_logits``; its
    direct term ``d(x logit)/dx = g_lp logit`` is added to dx here."""
    from . import rnade as _rn
    B, (D, H) = x.shape[0], V.shape
    g = grad_log_prob[:, None] * (x - torch.sigmoid(logits))
    if grad_logits is not None:
        g = g + grad_logits
    Vr, br = V.new_zeros(D, 3, 1, H), b.new_zeros(D, 3, 1)
    gr, pr = g.new_zeros(B, D, 3, 1), logits.new_zeros(B, D, 3, 1)
    Vr[:, 0, 0], br[:, 0, 0], gr[..., 0, 0], pr[..., 0, 0] = V, b, g, logits
    dW, dc, dV, db, dx = _rn._backward_op(grad_log_prob.new_zeros(B), gr, x, W, c, Vr, br, order, pr, backend)
    return dW, dc, dV[:, 0, 0], db[:, 0, 0], dx + grad_log_prob[:, None] * logits


_c.attach_autograd(_forward_op, _backward_op, x_has_grad=False, backward_with_dx=_backward_with_dx)


# ---- public functions -------------------------------------------------------------

def _check(W, c, V, b, order, backend):
    _c.check_tensor("W", W)
    if W.dim() != 2:
        raise ValueError(f"W must have shape [H, D], got {list(W.shape)}")
    H, D = W.shape
    _c.check_params(W, c, V, b, {"W": (H, D), "c": (H,), "V": (D, H), "b": (D,)},
                    {"W": "[H, D]", "c": "[H]", "V": "[D, H]", "b": "[D]"})
    backend = _c.pick_backend(backend, _MODEL, W.device, W.dtype)
    _c.check_backend_dtype(backend, W)
    return D, _c.order_arg(order, D), backend


def nade_log_prob(x: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor, order, backend: str = "cpp",
                  return_logits: bool = False):
    """log p(x) [B] of binary x [B, D] (differentiable w.r.t. W, c, V, b).

    With ``return_logits`` also returns the logits [B, D] (dimension space),
    themselves differentiable. ``backend``: ``"cpp"``, ``"reference"`` or ``"auto"``.
    """
    _c.check_return_logits(return_logits)
    D, order, backend = _check(W, c, V, b, order, backend)
    x = _c.x_arg(x, D, W, "binary", check_values=backend != "cpp")
    if backend == "reference":
        logits = _ref.nade_logits_loop(x, W, c, V, b, order)
        lp = bernoulli_log_prob(logits, x).sum(-1)
    else:
        lp, logits = _forward_op(x, W.contiguous(), c.contiguous(), V.contiguous(), b.contiguous(), order, backend)
    return (lp, logits) if return_logits else lp


def nade_sample(W: Tensor, c: Tensor, V: Tensor, b: Tensor, order, u: Tensor, backend: str = "cpp"):
    """Samples x [n, D] (``x_d = 1{u_d < sigmoid(logit_d)}``) and their log p [n] from uniforms u [n, D].

    Not differentiable (the samples are discrete).
    """
    D, order, backend = _check(W, c, V, b, order, backend)
    u = _c.u_arg(u, D, (), W, check_values=backend != "cpp")
    if backend == "reference":
        with torch.no_grad():
            return _ref.nade_sample(W, c, V, b, order, u)
    with torch.no_grad():
        return _sample_op(W.detach().contiguous(), c.detach().contiguous(), V.detach().contiguous(),
                          b.detach().contiguous(), order, u, backend)


_c.register_cpp(_MODEL)
