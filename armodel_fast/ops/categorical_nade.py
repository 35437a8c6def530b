"""Categorical NADE ops (DESIGN.md section 2, variants): :func:`categorical_nade_log_prob`,
:func:`categorical_nade_sample`.

Same chain as :mod:`.nade`: C++ kernels ``categorical_nade_{forward,backward,sample}``
(csrc/nade_variants_cpu.cpp) -> custom ops ``armodel_fast::categorical_nade_*``
(fake impls, autograd; backend as a string argument) -> these functions.

Parameters ``W [H, D, K]``, ``c [H]``, ``V [D, K, H]``, ``b [D, K]``; x int64 in
``[0, K)``; the input update adds ``W[:, d, x_d]``; logits ``[B, D, K]``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .._validate import check_categorical_x
from ..reference import categorical_nade as _ref
from ..reference.heads import categorical_log_prob
from . import _nade_common as _c

_MODEL = "categorical_nade"


@torch.library.custom_op("armodel_fast::categorical_nade_forward", mutates_args=())
def _forward_op(x: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor, order: Tensor,
                backend: str) -> Tuple[Tensor, Tensor]:
    """(log_prob [B], logits [B, D, K])."""
    return tuple(_c.kernel(_MODEL, "forward", backend)(x, W, c, V, b, order))


@_forward_op.register_fake
def _(x, W, c, V, b, order, backend):
    return W.new_empty(x.shape[0]), W.new_empty(x.shape[0], W.shape[1], W.shape[2])


@torch.library.custom_op("armodel_fast::categorical_nade_backward", mutates_args=())
def _backward_op(grad_log_prob: Tensor, grad_logits: Optional[Tensor], x: Tensor, W: Tensor, c: Tensor,
                 V: Tensor, b: Tensor, order: Tensor, logits: Tensor,
                 backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dW, dc, dV, db) of ``sum(grad_log_prob * log_prob) + sum(grad_logits * logits)``."""
    return tuple(_c.kernel(_MODEL, "backward", backend)(grad_log_prob, grad_logits, x, W, c, V, b, order, logits))


@_backward_op.register_fake
def _(grad_log_prob, grad_logits, x, W, c, V, b, order, logits, backend):
    return torch.empty_like(W), torch.empty_like(c), torch.empty_like(V), torch.empty_like(b)


@torch.library.custom_op("armodel_fast::categorical_nade_sample", mutates_args=())
def _sample_op(W: Tensor, c: Tensor, V: Tensor, b: Tensor, order: Tensor, u: Tensor,
               backend: str) -> Tuple[Tensor, Tensor]:
    """(x int64 [n, D], log_prob [n]) from uniforms u [n, D]."""
    return tuple(_c.kernel(_MODEL, "sample", backend)(W, c, V, b, order, u))


@_sample_op.register_fake
def _(W, c, V, b, order, u, backend):
    return u.new_empty(u.shape[0], W.shape[1], dtype=torch.long), W.new_empty(u.shape[0])


_c.attach_autograd(_forward_op, _backward_op, x_has_grad=False)


def _check(W, c, V, b, order, backend):
    _c.check_tensor("W", W)
    if W.dim() != 3:
        raise ValueError(f"W must have shape [H, D, K], got {list(W.shape)}")
    H, D, K = W.shape
    _c.check_params(W, c, V, b, {"W": (H, D, K), "c": (H,), "V": (D, K, H), "b": (D, K)},
                    {"W": "[H, D, K]", "c": "[H]", "V": "[D, K, H]", "b": "[D, K]"})
    backend = _c.pick_backend(backend, _MODEL, W.device, W.dtype)
    _c.check_backend_dtype(backend, W)
    return D, K, _c.order_arg(order, D), backend


def _x_arg(x, D, K, W):
    if not _c.compiling():
        return check_categorical_x(x, D, K, W.device).contiguous()
    _c.check_tensor("x", x)
    if x.dtype.is_floating_point or x.dtype == torch.bool:
        raise TypeError(f"x must hold integer class indices, got dtype {x.dtype}")
    _c._check_common("x", x, D, W.device)
    return x.long().contiguous()


def categorical_nade_log_prob(x: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor, order,
                              backend: str = "cpp", return_logits: bool = False):
    """log p(x) [B] of class indices x [B, D] (differentiable w.r.t. W, c, V, b).

    With ``return_logits`` also returns the logits [B, D, K] (dimension space).
    """
    _c.check_return_logits(return_logits)
    D, K, order, backend = _check(W, c, V, b, order, backend)
    x = _x_arg(x, D, K, W)
    if backend == "reference":
        logits = _ref.categorical_nade_logits_loop(x, W, c, V, b, order)
        lp = categorical_log_prob(logits, x).sum(-1)
    else:
        lp, logits = _forward_op(x, W.contiguous(), c.contiguous(), V.contiguous(), b.contiguous(), order, backend)
    return (lp, logits) if return_logits else lp


def categorical_nade_sample(W: Tensor, c: Tensor, V: Tensor, b: Tensor, order, u: Tensor, backend: str = "cpp"):
    """Samples x int64 [n, D] by the inverse-CDF rule and their log p [n], from uniforms u [n, D]."""
    D, K, order, backend = _check(W, c, V, b, order, backend)
    u = _c.u_arg(u, D, (), W)
    with torch.no_grad():
        if backend == "reference":
            return _ref.categorical_nade_sample(W, c, V, b, order, u)
        return _sample_op(W.detach().contiguous(), c.detach().contiguous(), V.detach().contiguous(),
                          b.detach().contiguous(), order, u, backend)


_c.register_cpp(_MODEL)
