"""Categorical NADE: K values per dimension, softmax outputs."""
from __future__ import annotations

from .._validate import check_positive_int
from ..ops.nade.spec import SPECS
from .nade import NADEBase


class CategoricalNADE(NADEBase):
    """``W [H, D, K]``, ``c [H]``, ``V [D, K, H]``, ``b [D, K]``.

    ``x [B, D]`` holds int64 classes in ``[0, K)``; ``forward -> logits [B, D, K]``;
    ``sample`` takes ``u [n, D]`` (inverse CDF, see ``reference/heads.py``).
    """

    spec = SPECS["categorical_nade"]
    op = spec.op

    def __init__(self, D: int, H: int, K: int, order=None, backend: str = "reference",
                 device=None, dtype=None):
        self.K = check_positive_int("K", K, minimum=2)
        super().__init__(D, H, K, order, backend, device, dtype)
