"""NADE modules (binary; categorical and RNADE build on the same base)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .._validate import check_binary_x, check_order, check_positive_int
from ..reference import nade as ref
from ..reference.heads import bernoulli_log_prob
from .base import AutoregressiveModel


class NADEBase(AutoregressiveModel):
    """Parameters ``W, c, V, b`` and an ``order`` buffer; subclasses give shapes and heads.

    Subclasses implement ``_check_x``, ``_ref_params`` (reference forward),
    ``_ref_sample``, ``_head_log_prob`` and ``_kernel_ops`` (the ops module
    functions ``(log_prob_fn, sample_fn)`` for a non-reference backend).
    """

    def __init__(self, D, H, W_shape, V_shape, b_shape, order=None, backend="reference",
                 device=None, dtype=None):
        super().__init__(D, backend)
        self.H = check_positive_int("H", H)
        fk = {"device": device, "dtype": dtype}
        self.W = nn.Parameter(torch.empty(W_shape, **fk))
        self.c = nn.Parameter(torch.empty(H, **fk))
        self.V = nn.Parameter(torch.empty(V_shape, **fk))
        self.b = nn.Parameter(torch.empty(b_shape, **fk))
        self.register_buffer("order", check_order(order, D).to(device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.W, -1 / math.sqrt(self.D), 1 / math.sqrt(self.D))
        nn.init.uniform_(self.V, -1 / math.sqrt(self.H), 1 / math.sqrt(self.H))
        nn.init.zeros_(self.c)
        nn.init.zeros_(self.b)

    def params(self) -> tuple:
        return self.W, self.c, self.V, self.b, self.order

    def _log_prob_and_params(self, x):
        backend = self._resolve()
        if backend == "reference":
            p = self._ref_params(x)
            return self._head_log_prob(p, x), p
        log_prob_fn, _ = self._kernel_ops()
        return log_prob_fn(x, *self.params(), backend=backend, return_logits=True)

    def forward(self, x: torch.Tensor):
        """Per-dimension output parameters (dimension space; see the subclass)."""
        return self._log_prob_and_params(self._check_x(x))[1]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats, shape [B]."""
        return self._log_prob_and_params(self._check_x(x))[0]

    def sample(self, n: int, u=None, generator=None, return_log_prob: bool = False):
        """Draw n samples; ``u`` of shape ``uniforms_shape(n)`` makes it deterministic.

        With ``return_log_prob`` also returns the sum of the conditionals used
        to draw each sample, [n].
        """
        u = self._uniforms(n, u, generator)
        backend = self._resolve()
        with torch.no_grad():
            if backend == "reference":
                x, lp = self._ref_sample(u)
            else:
                x, lp = self._kernel_ops()[1](*self.params(), u, backend=backend)
        return (x, lp) if return_log_prob else x

    def extra_repr(self) -> str:
        return f"D={self.D}, H={self.H}, backend={self.backend!r}"


class NADE(NADEBase):
    """Binary NADE (DESIGN.md section 2): ``W [H, D]``, ``c [H]``, ``V [D, H]``, ``b [D]``.

    ``forward(x [B, D]) -> logits [B, D]``; ``sample`` takes uniforms ``u [n, D]``
    and sets ``x_d = 1{u_d < sigmoid(logit_d)}``.
    """

    op = "nade"

    def __init__(self, D: int, H: int, order=None, backend: str = "reference", device=None, dtype=None):
        super().__init__(D, H, (H, D), (D, H), (D,), order, backend, device, dtype)

    def _check_x(self, x):
        return check_binary_x(x, self.D, self.device, self.dtype)

    def _ref_params(self, x):
        return ref.nade_logits_loop(x, *self.params())

    def _head_log_prob(self, logits, x):
        return bernoulli_log_prob(logits, x).sum(-1)

    def _ref_sample(self, u):
        return ref.nade_sample(*self.params(), u)

    def _kernel_ops(self):
        from ..ops import nade as ops
        return ops.nade_log_prob, ops.nade_sample
