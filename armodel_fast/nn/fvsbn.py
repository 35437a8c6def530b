"""FVSBN: a fully visible sigmoid belief network, one strictly masked linear layer."""
from __future__ import annotations

import torch
from torch import nn

from .._validate import check_binary_x, check_order
from ..ops import made as fast
from ..ops.masked_linear import auto_work
from ..reference.heads import bernoulli_log_prob
from ..reference.made import input_degrees
from .base import AutoregressiveModel
from .masked_linear import MaskedLinear


class FVSBN(AutoregressiveModel):
    """``p(x_d = 1 | x_<d) = sigmoid(bias[d] + sum_{e before d} weight[d, e] x_e)`` (docs/DESIGN.md section 1).

    Parameters live in ``self.linear`` (a strict :class:`MaskedLinear`, D -> D,
    degrees = position in ``order`` + 1). ``forward(x [B, D]) -> logits [B, D]``;
    ``sample`` takes ``u [n, D]``.
    """

    op = "fvsbn"

    def __init__(self, D: int, order=None, backend: str = "reference", device=None, dtype=None):
        super().__init__(D, backend)
        order = check_order(order, D)
        self.register_buffer("order", order.to(device))
        m0 = input_degrees(order)
        self.linear = MaskedLinear(D, D, m0, m0, strict=True, device=device, dtype=dtype)
        with torch.no_grad():
            self.linear.weight.mul_(self.linear.mask())  # start with the masked-out weights at 0
        nn.init.zeros_(self.linear.bias)
        self.set_backend(self.backend)  # the masked layer shows the model's backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_binary_x(x, self.D, self.device, self.dtype)
        lin = self.linear
        backend = self._resolve(work=lambda: auto_work(x, lin.weight, lin.bias, lin.in_degrees, lin.out_degrees))
        return fast.fvsbn_logits(x, lin.weight, lin.bias, lin.in_degrees, backend)

    def auto_work(self, batch: int):
        """What ``backend="auto"``'s size rule looks at for a forward of ``batch`` rows (dispatch.Work)."""
        lin = self.linear
        rows = lin.weight.new_zeros(()).expand(batch, self.D)  # the shape only: no allocation
        return auto_work(rows, lin.weight, lin.bias, lin.in_degrees, lin.out_degrees)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats, [B]."""
        x = check_binary_x(x, self.D, self.device, self.dtype)
        if self._fused_heads:  # the reference's head in one autograd node (ops/made/bernoulli_head.py)
            return fast.bernoulli_log_prob(self(x), x)
        return bernoulli_log_prob(self(x), x).sum(-1)

    def sample(self, n: int, u=None, generator=None, return_log_prob: bool = False):
        """Draw n samples from uniforms ``u [n, D]`` (``x_d = 1{u_d < p_d}``)."""
        u = self._uniforms(n, u, generator)
        x, lp = fast.fvsbn_sample(self.linear.weight, self.linear.bias, self.linear.in_degrees, self.order, u,
                                  self._resolve("made_sample"))  # one pass over the weights, or D (reference)
        return (x, lp) if return_log_prob else x
