"""Triton kernels for categorical NADE: log-prob, backward, sampling.

Parameters ``W [H, D, K]``, ``c [H]``, ``V [D, K, H]``, ``b [D, K]``; ``x [B, D]``
int64 class indices in ``[0, K)`` (not checked here: validate with
``_validate.check_categorical_x``). The contract is that of
:mod:`.nade_triton` (dtypes, devices, ``order``, ``block_b``) with:

* ``categorical_nade_forward(x, W, c, V, b, order) -> (log_prob [B], logits [B, D, K])`` (fp32);
* ``categorical_nade_backward(grad, x, W, c, V, b, order, logits) -> (dW, dc, dV, db)``;
* ``categorical_nade_sample(W, c, V, b, order, u [n, D]) -> (x [n, D] int64, log_prob [n])``
  by the inverse-CDF rule of ``reference/heads.categorical_sample``;
* an optional ``block_k`` (power of 2): the K outputs of a step are computed
  BLOCK_K at a time with an online logsumexp, so K is not limited by registers.

``W`` is passed as ``Wt = W.permute(1, 2, 0)`` ([D, K, H] contiguous): the input
update ``a += W[:, d, x_d]`` is a per-row gather of contiguous rows, and its
backward a per-row atomic scatter into ``dWt[d, x_d, :]``. Sampling keeps the
current step's logits in a [n, K] fp32 scratch buffer (written, then read back
after a barrier) for the two passes the inverse CDF needs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import (check_arg, check_grad, check_grad_outputs, check_order, check_params, grid,
                            head_chunk, head_chunk_grad, hidden_block, init_hidden, inverse_cdf,
                            launch_config, load_chunk, lse_update, row_block, stored_lse)


@triton.jit
def _cat_nade_fwd_kernel(in_ptr, wt_ptr, c_ptr, v_ptr, b_ptr, order_ptr, logp_ptr, out_ptr, scratch_ptr,
                         B, D, H, K, SAMPLE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_K: tl.constexpr):
    """Log-prob (in = x, out = logits [B, D, K]) or, with SAMPLE, sampling (in = u, out = x;
    each step's logits go to scratch [B, K] and are read back by the inverse-CDF rule)."""
    rows, rmask = row_block(B, BLOCK_B)
    hs, hmask = hidden_block(H, BLOCK_H)
    m2 = rmask[:, None] & hmask[None, :]
    a = init_hidden(c_ptr, hs, hmask, BLOCK_B, BLOCK_H)
    lp = tl.zeros([BLOCK_B], dtype=tl.float32)
    for t in range(D):
        d = tl.load(order_ptr + t)
        h = tl.sigmoid(a)
        if SAMPLE:
            base = scratch_ptr + rows * K
        else:
            xd = tl.load(in_ptr + rows * D + d, mask=rmask, other=0)
            base = out_ptr + (rows * D + d) * K
        m = tl.full([BLOCK_B], float("-inf"), tl.float32)
        s = tl.zeros([BLOCK_B], dtype=tl.float32)
        sel = tl.zeros([BLOCK_B], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < K
            logit = head_chunk(h, v_ptr + d * K * H, b_ptr + d * K, ks, kmask, hs, hmask, H)
            tl.store(base[:, None] + ks[None, :], logit, mask=rmask[:, None] & kmask[None, :])
            m, s = lse_update(m, s, tl.where(kmask[None, :], logit, float("-inf")))
            if not SAMPLE:
                sel += tl.sum(tl.where(ks[None, :] == xd[:, None], logit, 0.0), axis=1)
        lse = m + tl.log(s)
        if SAMPLE:
            tl.debug_barrier()                           # scratch written -> read by other threads
            ud = tl.load(in_ptr + rows * D + d, mask=rmask, other=0.0).to(tl.float32)
            xd = inverse_cdf(base, rmask, lse, ud, K, BLOCK_B, BLOCK_K)
            sel = tl.load(base + xd, mask=rmask, other=0.0)
            tl.store(out_ptr + rows * D + d, xd, mask=rmask)
        lp += sel - lse
        a += tl.load(wt_ptr + (d * K + xd)[:, None] * H + hs[None, :], mask=m2, other=0.0).to(tl.float32)
        if SAMPLE:
            tl.debug_barrier()                           # reads done before the next step writes
    tl.store(logp_ptr + rows, lp, mask=rmask)


@triton.jit
def _cat_nade_bwd_kernel(grad_ptr, x_ptr, wt_ptr, c_ptr, v_ptr, order_ptr, logits_ptr, gout_ptr,
                         dwt_ptr, dc_ptr, dv_ptr, db_ptr,
                         B, D, H, K, HAS_GOUT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_K: tl.constexpr):
    rows, rmask = row_block(B, BLOCK_B)
    hs, hmask = hidden_block(H, BLOCK_H)
    m2 = rmask[:, None] & hmask[None, :]
    a = init_hidden(c_ptr, hs, hmask, BLOCK_B, BLOCK_H)
    for j in range(D):                                   # a_D
        xj = tl.load(x_ptr + rows * D + j, mask=rmask, other=0)
        a += tl.load(wt_ptr + (j * K + xj)[:, None] * H + hs[None, :], mask=m2, other=0.0).to(tl.float32)
    g = tl.load(grad_ptr + rows, mask=rmask, other=0.0)
    acc = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
    for i in range(D):
        d = tl.load(order_ptr + (D - 1 - i))
        xd = tl.load(x_ptr + rows * D + d, mask=rmask, other=0)
        col = (d * K + xd)[:, None] * H + hs[None, :]
        a -= tl.load(wt_ptr + col, mask=m2, other=0.0).to(tl.float32)          # a_t
        tl.atomic_add(dwt_ptr + col, acc, mask=m2)       # dW[:, d, x_d] += sum_{t' > t} da_t'
        h = tl.sigmoid(a)
        base = logits_ptr + (rows * D + d) * K
        lse = stored_lse(base, rmask, K, BLOCK_B, BLOCK_K)
        dh = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < K
            p = tl.where(kmask[None, :], tl.exp(load_chunk(base, rmask, ks, kmask) - lse[:, None]), 0.0)
            gl = g[:, None] * ((ks[None, :] == xd[:, None]).to(tl.float32) - p)
            if HAS_GOUT:                                 # + the upstream gradient of the logits
                gl += load_chunk(gout_ptr + (rows * D + d) * K, rmask, ks, kmask)
            dh += head_chunk_grad(gl, h, v_ptr + d * K * H, dv_ptr + d * K * H, db_ptr + d * K,
                                  ks, kmask, hs, hmask, H)
        acc += dh * h * (1.0 - h)
    tl.atomic_add(dc_ptr + hs, tl.sum(acc, axis=0), mask=hmask)


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------


def _check(W, c, V, b, order):
    if not isinstance(W, torch.Tensor) or W.dim() != 3:
        raise ValueError(f"W must have shape [H, D, K], got {getattr(W, 'shape', None)}")
    H, D, K = W.shape
    device = check_params(W, c, V, b, (H, D, K), (D, K, H), (D, K))
    return H, D, K, device, check_order(order, D, device)


def _transposed(W):
    return W.permute(1, 2, 0).contiguous()               # [D, K, H]


def categorical_nade_forward(x, W, c, V, b, order, *, block_b=None, block_k=None):
    """log p(x) [B] and logits [B, D, K], both fp32."""
    H, D, K, device, order = _check(W, c, V, b, order)
    check_arg("x", x, (None, D), device, dtypes=(torch.int64,))
    B = x.shape[0]
    logp = torch.empty(B, device=device, dtype=torch.float32)
    logits = torch.empty(B, D, K, device=device, dtype=torch.float32)
    if B:
        cfg = launch_config(B, H, K, block_b, block_k)
        _cat_nade_fwd_kernel[grid(B, cfg)](x, _transposed(W), c, V, b, order, logp, logits, logits,
                                           B, D, H, K, SAMPLE=False, **cfg)
    return logp, logits


def categorical_nade_backward(grad, x, W, c, V, b, order, logits, grad_logits=None, *, block_b=None,
                              block_k=None):
    """Gradients (dW, dc, dV, db) of ``sum(grad * log_prob) + sum(grad_logits * logits)``
    (``grad_logits [B, D, K]`` or None), in the parameter dtype."""
    H, D, K, device, order = _check(W, c, V, b, order)
    check_arg("x", x, (None, D), device, dtypes=(torch.int64,))
    B = x.shape[0]
    check_arg("logits", logits, (B, D, K), device, dtypes=(torch.float32,))
    grad = check_grad(grad, B, device)
    gout = check_grad_outputs(grad_logits, "grad_logits", (B, D, K), device)
    f32 = dict(device=device, dtype=torch.float32)
    dWt, dc = torch.zeros(D, K, H, **f32), torch.zeros(H, **f32)
    dV, db = torch.zeros(D, K, H, **f32), torch.zeros(D, K, **f32)
    if B:
        cfg = launch_config(B, H, K, block_b, block_k)
        _cat_nade_bwd_kernel[grid(B, cfg)](grad, x, _transposed(W), c, V, order, logits,
                                           logits if gout is None else gout, dWt, dc, dV, db, B, D, H, K,
                                           HAS_GOUT=gout is not None, **cfg)
    dt = W.dtype
    return dWt.permute(2, 0, 1).contiguous().to(dt), dc.to(dt), dV.to(dt), db.to(dt)


def categorical_nade_sample(W, c, V, b, order, u, *, block_b=None, block_k=None):
    """Samples x [n, D] int64 from uniforms u [n, D], and their log p [n] (fp32)."""
    H, D, K, device, order = _check(W, c, V, b, order)
    check_arg("u", u, (None, D), device, dtypes=(torch.float32, torch.float64, torch.float16,
                                                   torch.bfloat16))
    n = u.shape[0]
    x = torch.empty(n, D, device=device, dtype=torch.int64)
    logp = torch.empty(n, device=device, dtype=torch.float32)
    if n:
        cfg = launch_config(n, H, K, block_b, block_k)
        scratch = torch.empty(n, K, device=device, dtype=torch.float32)
        _cat_nade_fwd_kernel[grid(n, cfg)](u, _transposed(W), c, V, b, order, logp, x, scratch,
                                           n, D, H, K, SAMPLE=True, **cfg)
    return x, logp
