"""Reference RNADE: real-valued NADE with a K-component Gaussian mixture per step.

Parameters: ``W [H, D]``, ``c [H]``, ``V [D, 3, K, H]``, ``b [D, 3, K]``. Step t
computes ``p = b[d] + V[d] h_t`` ([3, K]) = (mixture logits, means, log-scales);
the input update is ``a <- a + W[:, d] x_d`` (docs/DESIGN.md section 2, variants).
"""
from __future__ import annotations

import torch

from .heads import gaussian_mixture_log_prob, gaussian_mixture_sample
from .nade import exclusive_cumsum_hidden, inverse_order


def _head(V, b, d, h):
    """Mixture parameters of dimension d for hidden states h [B, H] -> [B, 3, K]."""
    return b.select(0, d) + torch.einsum("bh,jkh->bjk", h, V.select(0, d))


def rnade_params_loop(x, W, c, V, b, order) -> torch.Tensor:
    """x [B, D] -> params [B, D, 3, K] (logits, mu, log_sigma along dim 2)."""
    B, D = x.shape
    a = c.expand(B, -1)
    params = []
    for d in order.tolist():
        params.append(_head(V, b, d, torch.sigmoid(a)))
        a = a + x.narrow(1, d, 1) * W.select(1, d)
    return torch.stack(params, dim=1)[:, inverse_order(order).to(x.device)]


def rnade_params_cumsum(x, W, c, V, b, order) -> torch.Tensor:
    """Vectorised form of :func:`rnade_params_loop` ([B, D, H] memory)."""
    order = order.to(x.device)
    h = torch.sigmoid(exclusive_cumsum_hidden(c, x[:, order, None] * W.t()[order]))
    params = b[order] + torch.einsum("bth,tjkh->btjk", h, V[order])
    return params[:, inverse_order(order)]


def rnade_log_prob(x, W, c, V, b, order, form: str = "loop") -> torch.Tensor:
    fn = {"loop": rnade_params_loop, "cumsum": rnade_params_cumsum}[form]
    p = fn(x, W, c, V, b, order)
    return gaussian_mixture_log_prob(*p.unbind(2), x).sum(-1)  # one backward (a stack), not 3 zero-filled


def rnade_sample(W, c, V, b, order, u):
    """Draw x [n, D] from uniforms u [n, D, 2] (see heads.py); also return log p(x) [n]."""
    n, D, _ = u.shape
    a = c.expand(n, -1)
    x = u.new_zeros(n, D)
    log_prob = u.new_zeros(n)
    for d in order.tolist():
        p = _head(V, b, d, torch.sigmoid(a))
        xd = gaussian_mixture_sample(p[:, 0], p[:, 1], p[:, 2], u[:, d])
        x[:, d] = xd
        log_prob = log_prob + gaussian_mixture_log_prob(p[:, 0], p[:, 1], p[:, 2], xd)
        a = a + xd[:, None] * W[:, d]
    return x, log_prob
