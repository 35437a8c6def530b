"""RNADE ops (DESIGN.md section 2, variants): :func:`rnade_log_prob`, :func:`rnade_sample`.

Same chain as :mod:`.nade`: C++ kernels ``rnade_{forward,backward,sample}``
(csrc/nade_variants_cpu.cpp) -> custom ops ``armodel_fast::rnade_*`` (fake
impls, autograd; backend as a string argument) -> these functions.

Parameters ``W [H, D]``, ``c [H]``, ``V [D, 3, K, H]``, ``b [D, 3, K]``; each
step's ``[3, K]`` outputs are mixture logits, means and log-scales. x is real
and the log-density is differentiable w.r.t. x as well as the parameters.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..reference import rnade as _ref
from ..reference.heads import gaussian_mixture_log_prob
from . import _nade_common as _c

_MODEL = "rnade"


@torch.library.custom_op("armodel_fast::rnade_forward", mutates_args=())
def _forward_op(x: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor, order: Tensor,
                backend: str) -> Tuple[Tensor, Tensor]:
    """(log_prob [B], params [B, D, 3, K])."""
    return tuple(_c.kernel(_MODEL, "forward", backend)(x, W, c, V, b, order))


@_forward_op.register_fake
def _(x, W, c, V, b, order, backend):
    return W.new_empty(x.shape[0]), W.new_empty(x.shape[0], W.shape[1], 3, V.shape[2])


@torch.library.custom_op("armodel_fast::rnade_backward", mutates_args=())
def _backward_op(grad_log_prob: Tensor, grad_params: Optional[Tensor], x: Tensor, W: Tensor, c: Tensor,
                 V: Tensor, b: Tensor, order: Tensor, params: Tensor,
                 backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dW, dc, dV, db, dx) of ``sum(grad_log_prob * log_prob) + sum(grad_params * params)``."""
    return tuple(_c.kernel(_MODEL, "backward", backend)(grad_log_prob, grad_params, x, W, c, V, b, order, params))


@_backward_op.register_fake
def _(grad_log_prob, grad_params, x, W, c, V, b, order, params, backend):
    return (torch.empty_like(W), torch.empty_like(c), torch.empty_like(V), torch.empty_like(b),
            torch.empty_like(x))


@torch.library.custom_op("armodel_fast::rnade_sample", mutates_args=())
def _sample_op(W: Tensor, c: Tensor, V: Tensor, b: Tensor, order: Tensor, u: Tensor,
               backend: str) -> Tuple[Tensor, Tensor]:
    """(x [n, D], log_prob [n]) from uniforms u [n, D, 2]."""
    return tuple(_c.kernel(_MODEL, "sample", backend)(W, c, V, b, order, u))


@_sample_op.register_fake
def _(W, c, V, b, order, u, backend):
    return W.new_empty(u.shape[0], W.shape[1]), W.new_empty(u.shape[0])


_c.attach_autograd(_forward_op, _backward_op, x_has_grad=True)


def _check(W, c, V, b, order, backend):
    _c.check_tensor("W", W)
    _c.check_tensor("V", V)
    if W.dim() != 2:
        raise ValueError(f"W must have shape [H, D], got {list(W.shape)}")
    if V.dim() != 4 or V.shape[1] != 3:
        raise ValueError(f"V must have shape [D, 3, K, H], got {list(V.shape)}")
    (H, D), K = W.shape, V.shape[2]
    _c.check_params(W, c, V, b, {"W": (H, D), "c": (H,), "V": (D, 3, K, H), "b": (D, 3, K)},
                    {"W": "[H, D]", "c": "[H]", "V": "[D, 3, K, H]", "b": "[D, 3, K]"})
    backend = _c.pick_backend(backend, _MODEL, W.device, W.dtype)
    _c.check_backend_dtype(backend, W)
    return D, _c.order_arg(order, D), backend


def rnade_log_prob(x: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor, order, backend: str = "cpp",
                   return_logits: bool = False):
    """log-density [B] of real x [B, D] (differentiable w.r.t. x, W, c, V, b).

    With ``return_logits`` also returns the per-step mixture parameters [B, D, 3, K]
    (logits, means, log-scales; named as in the other NADE ops).
    """
    _c.check_return_logits(return_logits)
    D, order, backend = _check(W, c, V, b, order, backend)
    x = _c.x_arg(x, D, W, "real")
    if backend == "reference":
        p = _ref.rnade_params_loop(x, W, c, V, b, order)
        lp = gaussian_mixture_log_prob(p[:, :, 0], p[:, :, 1], p[:, :, 2], x).sum(-1)
    else:
        lp, p = _forward_op(x, W.contiguous(), c.contiguous(), V.contiguous(), b.contiguous(), order, backend)
    return (lp, p) if return_logits else lp


def rnade_sample(W: Tensor, c: Tensor, V: Tensor, b: Tensor, order, u: Tensor, backend: str = "cpp"):
    """Samples x [n, D] and their log-density [n] from uniforms u [n, D, 2] (component, quantile)."""
    D, order, backend = _check(W, c, V, b, order, backend)
    u = _c.u_arg(u, D, (2,), W)
    with torch.no_grad():
        if backend == "reference":
            return _ref.rnade_sample(W, c, V, b, order, u)
        return _sample_op(W.detach().contiguous(), c.detach().contiguous(), V.detach().contiguous(),
                          b.detach().contiguous(), order, u, backend)


_c.register_cpp(_MODEL)
