"""NADE-family modules: one base driven by the op spec (``armodel_fast.ops.nade.spec``)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .._validate import check_order, check_positive_int
from ..ops import nade as ops
from ..ops.nade.spec import SPECS, NadeSpec
from .base import AutoregressiveModel

__all__ = ["NADE"]  # a new NADE-family module: its class below, its name here


class NADEBase(AutoregressiveModel):
    """Parameters ``W, c, V, b`` of ``spec``'s shapes and an ``order`` buffer.

    Every call resolves the backend once (``last_backend``) and runs the op
    (``ops.nade.log_prob`` / ``sample``), which validates x, the parameters and
    the order for every backend, the reference included.
    """

    spec: NadeSpec

    def __init__(self, D, H, K=None, order=None, backend="reference", device=None, dtype=None):
        super().__init__(D, backend)
        self.H = check_positive_int("H", H)
        sizes = {"H": H, "D": D, "K": K}
        fk = {"device": device, "dtype": dtype}
        self.W = nn.Parameter(torch.empty(self.spec.shape("W", sizes), **fk))
        self.c = nn.Parameter(torch.empty(self.spec.shape("c", sizes), **fk))
        self.V = nn.Parameter(torch.empty(self.spec.shape("V", sizes), **fk))
        self.b = nn.Parameter(torch.empty(self.spec.shape("b", sizes), **fk))
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
        return ops.log_prob(self.spec, x, *self.params(), backend=self._resolve(), return_logits=True)

    def forward(self, x: torch.Tensor):
        """Per-dimension output parameters [B, D, *spec.output_dims] (dimension space)."""
        return self._log_prob_and_params(x)[1]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats, shape [B]."""
        return self._log_prob_and_params(x)[0]

    def sample(self, n: int, u=None, generator=None, return_log_prob: bool = False):
        """Draw n samples; ``u`` of shape ``uniforms_shape(n)`` makes it deterministic.

        With ``return_log_prob`` also returns the sum of the conditionals used
        to draw each sample, [n].
        """
        u = self._uniforms(n, u, generator)
        x, lp = ops.sample(self.spec, *self.params(), u, backend=self._resolve())
        return (x, lp) if return_log_prob else x

    def extra_repr(self) -> str:
        k = f", K={self.K}" if "K" in self.spec.shapes["W"] + self.spec.shapes["V"] else ""
        return f"D={self.D}, H={self.H}{k}, backend={self.backend!r}"


class NADE(NADEBase):
    """Binary NADE (docs/DESIGN.md section 2): ``W [H, D]``, ``c [H]``, ``V [D, H]``, ``b [D]``.

    ``forward(x [B, D]) -> logits [B, D]``; ``sample`` takes uniforms ``u [n, D]``
    and sets ``x_d = 1{u_d < sigmoid(logit_d)}``.
    """

    spec = SPECS["nade"]
    op = spec.op

    def __init__(self, D: int, H: int, order=None, backend: str = "reference", device=None, dtype=None):
        super().__init__(D, H, None, order, backend, device, dtype)
