"""RNADE: real-valued NADE with a mixture of K Gaussians per dimension."""
from __future__ import annotations

import torch

from .._validate import check_positive_int
from ..ops.nade.spec import SPECS
from .nade import NADEBase


class RNADE(NADEBase):
    """``W [H, D]``, ``c [H]``, ``V [D, 3, K, H]``, ``b [D, 3, K]``.

    ``forward(x [B, D]) -> params [B, D, 3, K]`` (mixture logits, means,
    log-scales along dim 2); ``sample`` takes ``u [n, D, 2]``: ``u[..., 0]``
    picks the component, ``u[..., 1]`` the Gaussian by inverse CDF.
    """

    spec = SPECS["rnade"]
    op = spec.op
    uniform_trailing = spec.uniform_trailing

    def __init__(self, D: int, H: int, K: int, order=None, backend: str = "reference",
                 device=None, dtype=None):
        self.K = check_positive_int("K", K)
        super().__init__(D, H, K, order, backend, device, dtype)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():  # spread the component means so they start distinct
            self.b[:, 1].copy_(torch.linspace(-1.0, 1.0, self.K, dtype=self.b.dtype))
            self.V[:, 2].zero_()  # log-scales start at 0 (unit variance)
