"""Reference RNN autoregressive model (the lecture's ARRNN).

Step t reads the state h_t and emits ``logit_t = head(h_t)`` for dimension
``order[t]``; then ``h_{t+1} = rnn(x_{order[t]}, h_t)``. ``h_0`` is learned, so
step 0 depends on nothing. ``rnn`` is a one-layer ``nn.GRU``/``nn.LSTM``/``nn.RNN``
with input size 1 (batch_first); ``state0`` is ``h0 [H]`` or ``(h0, c0)`` for LSTM.
"""
from __future__ import annotations

import torch

from .heads import bernoulli_log_prob, bernoulli_sample
from .nade import inverse_order


def _initial_state(state0, n: int):
    if isinstance(state0, tuple):
        return tuple(s.expand(1, n, -1).contiguous() for s in state0)
    return state0.expand(1, n, -1).contiguous()


def _top(state):
    return (state[0] if isinstance(state, tuple) else state)[0]


def arrnn_logits(x, rnn, head, state0, order) -> torch.Tensor:
    """x [B, D] -> logits [B, D] (dimension space), one RNN pass over D-1 inputs."""
    B, D = x.shape
    order = order.to(x.device)
    state = _initial_state(state0, B)
    hs = [_top(state).unsqueeze(1)]
    if D > 1:
        out, _ = rnn(x[:, order[:-1], None], state)
        hs.append(out)
    logits = head(torch.cat(hs, dim=1)).squeeze(-1)    # [B, D] in step order
    return logits[:, inverse_order(order)]


def arrnn_log_prob(x, rnn, head, state0, order) -> torch.Tensor:
    return bernoulli_log_prob(arrnn_logits(x, rnn, head, state0, order), x).sum(-1)


def arrnn_sample(rnn, head, state0, order, u):
    """x [n, D] and log p(x) [n] from uniforms u [n, D], one RNN step per dimension."""
    n, D = u.shape
    state = _initial_state(state0, n)
    x = torch.zeros_like(u)
    log_prob = u.new_zeros(n)
    for d in order.tolist():
        logit = head(_top(state)).squeeze(-1)
        x[:, d] = bernoulli_sample(logit, u[:, d])
        log_prob = log_prob + bernoulli_log_prob(logit, x[:, d])
        _, state = rnn(x[:, d, None, None], state)
    return x, log_prob
