"""Categorical NADE: K values per dimension, softmax outputs."""
from __future__ import annotations

from .._validate import check_categorical_x, check_positive_int
from ..reference import categorical_nade as ref
from ..reference.heads import categorical_log_prob
from .nade import NADEBase


class CategoricalNADE(NADEBase):
    """``W [H, D, K]``, ``c [H]``, ``V [D, K, H]``, ``b [D, K]``.

    ``x [B, D]`` holds int64 classes in ``[0, K)``; ``forward -> logits [B, D, K]``;
    ``sample`` takes ``u [n, D]`` (inverse CDF, see ``reference/heads.py``).
    """

    op = "categorical_nade"

    def __init__(self, D: int, H: int, K: int, order=None, backend: str = "reference",
                 device=None, dtype=None):
        self.K = check_positive_int("K", K, minimum=2)
        super().__init__(D, H, (H, D, K), (D, K, H), (D, K), order, backend, device, dtype)

    def _check_x(self, x):
        return check_categorical_x(x, self.D, self.K, self.device)

    def _ref_params(self, x):
        return ref.categorical_nade_logits_loop(x, *self.params())

    def _head_log_prob(self, logits, x):
        return categorical_log_prob(logits, x).sum(-1)

    def _ref_sample(self, u):
        return ref.categorical_nade_sample(*self.params(), u)

    def _kernel_ops(self):
        from ..ops import categorical_nade as ops
        return ops.categorical_nade_log_prob, ops.categorical_nade_sample

    def extra_repr(self) -> str:
        return f"D={self.D}, H={self.H}, K={self.K}, backend={self.backend!r}"
