"""ARRNN: the RNN autoregressive model (GRU, LSTM or plain RNN cell)."""
from __future__ import annotations

import torch
from torch import nn

from .._validate import check_binary_x, check_order, check_positive_int
from ..reference import arrnn as ref
from ..reference.heads import bernoulli_log_prob
from .base import AutoregressiveModel

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}


class ARRNN(AutoregressiveModel):
    """Binary autoregressive RNN: ``logit_t = head(h_t)``, ``h_{t+1} = cell(x_{order[t]}, h_t)``.

    ``h_0`` (and ``c_0`` for LSTM) is learned. ``forward(x [B, D]) -> logits [B, D]``;
    ``sample`` takes ``u [n, D]``. Reference backend only (no fused kernel).
    """

    op = "arrnn"

    def __init__(self, D: int, H: int, cell: str = "gru", order=None, backend: str = "reference",
                 device=None, dtype=None):
        super().__init__(D, backend)
        self.H = check_positive_int("H", H)
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {tuple(CELLS)}, got {cell!r}")
        self.cell = cell
        fk = {"device": device, "dtype": dtype}
        self.rnn = CELLS[cell](1, H, batch_first=True, **fk)
        self.head = nn.Linear(H, 1, **fk)
        self.h0 = nn.Parameter(torch.zeros(H, **fk))
        self.c0 = nn.Parameter(torch.zeros(H, **fk)) if cell == "lstm" else None
        self.register_buffer("order", check_order(order, D).to(device))

    def _state0(self):
        return (self.h0, self.c0) if self.c0 is not None else self.h0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_binary_x(x, self.D, self.device, self.dtype)
        self._resolve()
        return ref.arrnn_logits(x, self.rnn, self.head, self._state0(), check_order(self.order, self.D))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats, [B]."""
        return bernoulli_log_prob(self(x), check_binary_x(x, self.D, self.device, self.dtype)).sum(-1)

    def sample(self, n: int, u=None, generator=None, return_log_prob: bool = False):
        u = self._uniforms(n, u, generator)
        self._resolve()
        with torch.no_grad():
            x, lp = ref.arrnn_sample(self.rnn, self.head, self._state0(), check_order(self.order, self.D), u)
        return (x, lp) if return_log_prob else x

    def extra_repr(self) -> str:
        return f"D={self.D}, H={self.H}, cell={self.cell!r}, backend={self.backend!r}"
