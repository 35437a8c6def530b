"""RNADE: real-valued NADE with a mixture of K Gaussians per dimension."""
from __future__ import annotations

import torch

from .._validate import check_positive_int, check_real_x
from ..reference import rnade as ref
from ..reference.heads import gaussian_mixture_log_prob
from .nade import NADEBase


class RNADE(NADEBase):
    """``W [H, D]``, ``c [H]``, ``V [D, 3, K, H]``, ``b [D, 3, K]``.

    ``forward(x [B, D]) -> params [B, D, 3, K]`` (mixture logits, means,
    log-scales along dim 2); ``sample`` takes ``u [n, D, 2]``: ``u[..., 0]``
    picks the component, ``u[..., 1]`` the Gaussian by inverse CDF.
    """

    op = "rnade"
    uniform_trailing = (2,)

    def __init__(self, D: int, H: int, K: int, order=None, backend: str = "reference",
                 device=None, dtype=None):
        self.K = check_positive_int("K", K)
        super().__init__(D, H, (H, D), (D, 3, self.K, H), (D, 3, self.K), order, backend, device, dtype)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():  # spread the component means so they start distinct
            self.b[:, 1].copy_(torch.linspace(-1.0, 1.0, self.K, dtype=self.b.dtype))
            self.V[:, 2].zero_()  # log-scales start at 0 (unit variance)

    def _check_x(self, x):
        return check_real_x(x, self.D, self.device, self.dtype)

    def _ref_params(self, x):
        return ref.rnade_params_loop(x, *self.params())

    def _head_log_prob(self, p, x):
        return gaussian_mixture_log_prob(p[:, :, 0], p[:, :, 1], p[:, :, 2], x).sum(-1)

    def _ref_sample(self, u):
        return ref.rnade_sample(*self.params(), u)

    def _kernel_ops(self):
        from ..ops import rnade as ops
        return ops.rnade_log_prob, ops.rnade_sample

    def extra_repr(self) -> str:
        return f"D={self.D}, H={self.H}, K={self.K}, backend={self.backend!r}"
