"""Reference NADE (binary), docs/DESIGN.md section 2: the oracle for every kernel.

Parameters: ``W [H, D]``, ``c [H]``, ``V [D, H]``, ``b [D]``; ``order [D]`` a
permutation (step t models dimension ``order[t]``). Two plain forms of the same
recurrence, tested against each other:

* :func:`nade_logits_loop` - the step loop with the incremental update
  ``a <- a + W[:, d] x_d``: O(BDH) time, O(BH) memory, D small ops.
* :func:`nade_logits_cumsum` - vectorised; materialises ``a`` as ``[B, D, H]``.

Logits are returned in dimension space: ``logits[:, d]`` is the logit of x_d.
"""
from __future__ import annotations

import torch

from .heads import bernoulli_log_prob, bernoulli_sample


def inverse_order(order: torch.Tensor) -> torch.Tensor:
    """``inv[d] = t`` where ``order[t] = d``."""
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel(), device=order.device)
    return inv


def exclusive_cumsum_hidden(c: torch.Tensor, contrib: torch.Tensor) -> torch.Tensor:
    """``a_t = c + sum_{s<t} contrib[:, s]`` for contrib ``[B, D, H]`` -> ``[B, D, H]``."""
    csum = torch.cumsum(contrib, dim=1)
    return c + torch.cat([torch.zeros_like(csum[:, :1]), csum[:, :-1]], dim=1)


def nade_logits_loop(x, W, c, V, b, order) -> torch.Tensor:
    """x [B, D] (0/1 floats) -> logits [B, D]."""
    B, D = x.shape
    steps = order.tolist()
    a = c.expand(B, -1)
    logits = []
    for d in steps:
        h = torch.sigmoid(a)
        logits.append(b.select(0, d) + h @ V.select(0, d))
        a = a + x.narrow(1, d, 1) * W.select(1, d)
    return torch.stack(logits, dim=1)[:, inverse_order(order).to(x.device)]


def nade_logits_cumsum(x, W, c, V, b, order) -> torch.Tensor:
    """Same as :func:`nade_logits_loop`, vectorised over steps ([B, D, H] memory)."""
    order = order.to(x.device)
    a = exclusive_cumsum_hidden(c, x[:, order, None] * W.t()[order])
    logits = b[order] + (torch.sigmoid(a) * V[order]).sum(-1)
    return logits[:, inverse_order(order)]


def nade_log_prob(x, W, c, V, b, order, form: str = "loop") -> torch.Tensor:
    """log p(x) in nats, [B]. ``form`` is ``"loop"`` or ``"cumsum"``."""
    fn = {"loop": nade_logits_loop, "cumsum": nade_logits_cumsum}[form]
    return bernoulli_log_prob(fn(x, W, c, V, b, order), x).sum(-1)


def nade_sample(W, c, V, b, order, u):
    """Draw x [n, D] from uniforms u [n, D] (x_d = 1{u_d < p_d}); also return log p(x) [n]."""
    n, D = u.shape
    a = c.expand(n, -1)
    x = torch.zeros_like(u)
    log_prob = u.new_zeros(n)
    for d in order.tolist():
        logit = b[d] + torch.sigmoid(a) @ V[d]
        xd = bernoulli_sample(logit, u[:, d])
        x[:, d] = xd
        log_prob = log_prob + bernoulli_log_prob(logit, xd)
        a = a + xd[:, None] * W[:, d]
    return x, log_prob
