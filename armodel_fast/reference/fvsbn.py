"""Reference FVSBN (docs/DESIGN.md section 1): one strictly masked linear layer.

Parameters: ``weight [D, D]``, ``bias [D]`` in dimension space; with degrees
``m[d] = position of d in the order + 1`` the strict mask keeps ``weight[d, e]``
only when e comes before d, so ``p(x_d = 1 | x_<d) = sigmoid(bias[d] + sum_e W*M [d, e] x_e)``.
"""
from __future__ import annotations

import torch

from .heads import bernoulli_log_prob, bernoulli_sample
from .masked_linear import masked_linear


def fvsbn_logits(x, weight, bias, degrees) -> torch.Tensor:
    """x [B, D] -> logits [B, D]."""
    return masked_linear(x, weight, bias, degrees, degrees, strict=True)


def fvsbn_log_prob(x, weight, bias, degrees) -> torch.Tensor:
    return bernoulli_log_prob(fvsbn_logits(x, weight, bias, degrees), x).sum(-1)


def fvsbn_sample(weight, bias, degrees, order, u):
    """D passes, one per step; x [n, D] and log p(x) [n] from uniforms u [n, D]."""
    x = torch.zeros_like(u)
    log_prob = u.new_zeros(u.shape[0])
    for d in order.tolist():
        logit = fvsbn_logits(x, weight, bias, degrees)[:, d]
        x[:, d] = bernoulli_sample(logit, u[:, d])
        log_prob = log_prob + bernoulli_log_prob(logit, x[:, d])
    return x, log_prob
