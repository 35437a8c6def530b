"""Reference categorical NADE (docs/DESIGN.md section 2, variants).

Parameters: ``W [H, D, K]``, ``c [H]``, ``V [D, K, H]``, ``b [D, K]``. The input
update adds the column of the observed class, ``a <- a + W[:, d, x_d]``, and
step t's output is ``log_softmax(b[d] + V[d] h_t)`` over K classes.
"""
from __future__ import annotations

import torch

from .heads import categorical_log_prob, categorical_sample
from .nade import exclusive_cumsum_hidden, inverse_order


def _column(W, d, xd):
    """``W[:, d, xd]`` for a batch of classes xd [B] -> [B, H]."""
    return W.select(1, d).t()[xd]


def categorical_nade_logits_loop(x, W, c, V, b, order) -> torch.Tensor:
    """x [B, D] int64 -> logits [B, D, K]."""
    B, D = x.shape
    a = c.expand(B, -1)
    logits = []
    for d in order.tolist():
        logits.append(b.select(0, d) + torch.sigmoid(a) @ V.select(0, d).t())
        a = a + _column(W, d, x.select(1, d))
    return torch.stack(logits, dim=1)[:, inverse_order(order).to(x.device)]


def categorical_nade_logits_cumsum(x, W, c, V, b, order) -> torch.Tensor:
    """Vectorised form of :func:`categorical_nade_logits_loop` ([B, D, H] memory)."""
    order = order.to(x.device)
    Wt = W.permute(1, 2, 0)                                  # [D, K, H]
    contrib = Wt[order[None, :], x[:, order]]                # [B, D, H]
    h = torch.sigmoid(exclusive_cumsum_hidden(c, contrib))
    logits = b[order] + torch.einsum("bth,tkh->btk", h, V[order])
    return logits[:, inverse_order(order)]


def categorical_nade_log_prob(x, W, c, V, b, order, form: str = "loop") -> torch.Tensor:
    fn = {"loop": categorical_nade_logits_loop, "cumsum": categorical_nade_logits_cumsum}[form]
    return categorical_log_prob(fn(x, W, c, V, b, order), x).sum(-1)


def categorical_nade_sample(W, c, V, b, order, u):
    """Draw x [n, D] int64 from uniforms u [n, D] by inverse CDF; also return log p(x) [n]."""
    n, D = u.shape
    a = c.expand(n, -1)
    x = torch.zeros(n, D, dtype=torch.long, device=u.device)
    log_prob = u.new_zeros(n)
    for d in order.tolist():
        logits = b[d] + torch.sigmoid(a) @ V[d].t()
        xd = categorical_sample(logits, u[:, d])
        x[:, d] = xd
        log_prob = log_prob + categorical_log_prob(logits, xd)
        a = a + _column(W, d, xd)
    return x, log_prob
