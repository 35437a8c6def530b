"""Triton kernels for RNADE (real-valued NADE, K-component Gaussian mixture per step).

Parameters ``W [H, D]``, ``c [H]``, ``V [D, 3, K, H]``, ``b [D, 3, K]``; step t
computes ``p = b[d] + V[d] h_t`` = (mixture logits, means, log-scales), and the
input update is ``a += W[:, d] x_d``. The contract is that of
:mod:`.nade_triton` with:

* ``rnade_forward(x, W, c, V, b, order) -> (log_prob [B], params [B, D, 3, K])`` (fp32);
* ``rnade_backward(grad, x, W, c, V, b, order, params) -> (dW, dc, dV, db, dx)``
  (``dx`` in x's dtype: the density's gradient in x, through the mixture and
  through the hidden state of later steps);
* ``rnade_sample(W, c, V, b, order, u [n, D, 2]) -> (x [n, D], log_prob [n])``:
  ``u[..., 0]`` picks the component by the categorical inverse-CDF rule,
  ``x = mu_k + exp(log_sigma_k) * Phi^{-1}(clamp(u[..., 1], 1e-6, 1 - 1e-6))``
  (``triton_common.ndtri``); each x_d is rounded to the parameter dtype before
  it feeds the later steps, so ``log_prob`` is that of the returned sample;
* optional ``block_b``, ``block_k`` as in :mod:`.categorical_nade_triton`.

Per step, ``log p = lse_k(logit_k + comp_k) - lse_k(logit_k)`` with
``comp = -z^2/2 - log_sigma - log sqrt(2 pi)``, ``z = (x - mu) / sigma``; both
logsumexps are online over K-chunks. The backward reads the forward's params
(two passes per step: the logsumexps, then the gradients with responsibilities
``r = softmax(logit + comp)`` and mixture weights ``pi``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import (check_arg, check_grad, check_grad_outputs, check_order, check_params, grid,
                            head_chunk, head_chunk_grad, hidden_block, init_hidden, inverse_cdf,
                            launch_config, load_chunk, load_row, lse_update, ndtri, row_block)

_LOG_SQRT_2PI = tl.constexpr(0.9189385332046727)    # log sqrt(2 pi)
_U_LO = tl.constexpr(1e-6)                          # reference/heads.py U_EPS


@triton.jit
def _gauss(x, mu, ls):
    """Log-density of N(mu, exp(ls)^2) at x [BLOCK_B] (per component), its z and 1/sigma."""
    isig = tl.exp(-ls)
    z = (x[:, None] - mu) * isig
    return -0.5 * z * z - ls - _LOG_SQRT_2PI, z, isig


@triton.jit
def _mixture_lse(base, rmask, x, K, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """(lse(logits), lse(logits + comp(x))) over params stored at base[row] (logits, mu, ls)."""
    m1 = tl.full([BLOCK_B], float("-inf"), tl.float32)
    s1 = tl.zeros([BLOCK_B], dtype=tl.float32)
    m2 = tl.full([BLOCK_B], float("-inf"), tl.float32)
    s2 = tl.zeros([BLOCK_B], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        lg = tl.where(kmask[None, :], load_chunk(base, rmask, ks, kmask), float("-inf"))
        comp, z, isig = _gauss(x, load_chunk(base + K, rmask, ks, kmask), load_chunk(base + 2 * K, rmask, ks, kmask))
        m1, s1 = lse_update(m1, s1, lg)
        m2, s2 = lse_update(m2, s2, lg + comp)
    return m1 + tl.log(s1), m2 + tl.log(s2)


@triton.jit
def _heads_to(base, rmask, h, v_ptr, b_ptr, ks, kmask, hs, hmask, H, K):
    """Compute the three [BLOCK_B, BLOCK_K] head chunks of one step and store them at base[row]."""
    smask = rmask[:, None] & kmask[None, :]
    lg = head_chunk(h, v_ptr, b_ptr, ks, kmask, hs, hmask, H)
    tl.store(base[:, None] + ks[None, :], lg, mask=smask)
    mu = head_chunk(h, v_ptr + K * H, b_ptr + K, ks, kmask, hs, hmask, H)
    tl.store(base[:, None] + K + ks[None, :], mu, mask=smask)
    ls = head_chunk(h, v_ptr + 2 * K * H, b_ptr + 2 * K, ks, kmask, hs, hmask, H)
    tl.store(base[:, None] + 2 * K + ks[None, :], ls, mask=smask)
    return tl.where(kmask[None, :], lg, float("-inf")), mu, ls


@triton.jit
def _rnade_fwd_kernel(in_ptr, wt_ptr, c_ptr, v_ptr, b_ptr, order_ptr, logp_ptr, out_ptr, scratch_ptr,
                      B, D, H, K, SAMPLE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    """Log-prob (in = x, out = params [B, D, 3, K]) or, with SAMPLE, sampling (in = u [B, D, 2],
    out = x; each step's params go to scratch [B, 3, K] and are read back to draw x_d)."""
    rows, rmask = row_block(B, BLOCK_B)
    hs, hmask = hidden_block(H, BLOCK_H)
    a = init_hidden(c_ptr, hs, hmask, BLOCK_B, BLOCK_H)
    lp = tl.zeros([BLOCK_B], dtype=tl.float32)
    for t in range(D):
        d = tl.load(order_ptr + t)
        h = tl.sigmoid(a)
        if SAMPLE:
            base = scratch_ptr + rows * 3 * K            # this step's (logits, mu, log_sigma)
        else:
            xd = tl.load(in_ptr + rows * D + d, mask=rmask, other=0.0).to(tl.float32)
            base = out_ptr + (rows * D + d) * 3 * K
        m1 = tl.full([BLOCK_B], float("-inf"), tl.float32)
        s1 = tl.zeros([BLOCK_B], dtype=tl.float32)
        m2 = tl.full([BLOCK_B], float("-inf"), tl.float32)
        s2 = tl.zeros([BLOCK_B], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < K
            lg, mu, ls = _heads_to(base, rmask, h, v_ptr + d * 3 * K * H, b_ptr + d * 3 * K,
                                   ks, kmask, hs, hmask, H, K)
            m1, s1 = lse_update(m1, s1, lg)
            if not SAMPLE:
                comp, z, isig = _gauss(xd, mu, ls)
                m2, s2 = lse_update(m2, s2, lg + comp)
        if SAMPLE:
            tl.debug_barrier()                           # scratch written -> read by other threads
            u0 = tl.load(in_ptr + (rows * D + d) * 2, mask=rmask, other=0.0).to(tl.float32)
            u1 = tl.load(in_ptr + (rows * D + d) * 2 + 1, mask=rmask, other=0.5).to(tl.float32)
            k = inverse_cdf(base, rmask, m1 + tl.log(s1), u0, K, BLOCK_B, BLOCK_K)
            mu_k = tl.load(base + K + k, mask=rmask, other=0.0)
            ls_k = tl.load(base + 2 * K + k, mask=rmask, other=0.0)
            z = ndtri(tl.minimum(tl.maximum(u1, _U_LO), 1.0 - _U_LO))
            xd = (mu_k + tl.exp(ls_k) * z).to(out_ptr.dtype.element_ty)
            tl.store(out_ptr + rows * D + d, xd, mask=rmask)
            xd = xd.to(tl.float32)
            lse1, lse2 = _mixture_lse(base, rmask, xd, K, BLOCK_B, BLOCK_K)
            lp += lse2 - lse1
        else:
            lp += (m2 + tl.log(s2)) - (m1 + tl.log(s1))
        # padded units stay 0: an inf x_d (drawn from non-finite parameters) times their 0 is NaN
        a += tl.where(hmask[None, :], xd[:, None] * load_row(wt_ptr + d * H, hs, hmask)[None, :], 0.0)
        if SAMPLE:
            tl.debug_barrier()                           # reads done before the next step writes
    tl.store(logp_ptr + rows, lp, mask=rmask)


@triton.jit
def _rnade_bwd_kernel(grad_ptr, x_ptr, wt_ptr, c_ptr, v_ptr, order_ptr, params_ptr, gout_ptr,
                      dwt_ptr, dc_ptr, dv_ptr, db_ptr, dx_ptr,
                      B, D, H, K, HAS_GOUT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    rows, rmask = row_block(B, BLOCK_B)
    hs, hmask = hidden_block(H, BLOCK_H)
    a = init_hidden(c_ptr, hs, hmask, BLOCK_B, BLOCK_H)
    for j in range(D):                                   # a_D
        xj = tl.load(x_ptr + rows * D + j, mask=rmask, other=0.0).to(tl.float32)
        a += xj[:, None] * load_row(wt_ptr + j * H, hs, hmask)[None, :]
    g = tl.load(grad_ptr + rows, mask=rmask, other=0.0)
    acc = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
    for i in range(D):
        d = tl.load(order_ptr + (D - 1 - i))
        xd = tl.load(x_ptr + rows * D + d, mask=rmask, other=0.0).to(tl.float32)
        w = load_row(wt_ptr + d * H, hs, hmask)
        a -= xd[:, None] * w[None, :]                    # a_t
        dx = tl.sum(acc * w[None, :], axis=1)            # through a_{t+1} = a_t + W[:, d] x_d
        tl.atomic_add(dwt_ptr + d * H + hs, tl.sum(acc * xd[:, None], axis=0), mask=hmask)
        h = tl.sigmoid(a)
        base = params_ptr + (rows * D + d) * 3 * K
        lse1, lse2 = _mixture_lse(base, rmask, xd, K, BLOCK_B, BLOCK_K)
        vd, dvd, dbd = v_ptr + d * 3 * K * H, dv_ptr + d * 3 * K * H, db_ptr + d * 3 * K
        dh = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < K
            lg = load_chunk(base, rmask, ks, kmask)
            comp, z, isig = _gauss(xd, load_chunk(base + K, rmask, ks, kmask),
                                   load_chunk(base + 2 * K, rmask, ks, kmask))
            r = tl.where(kmask[None, :], tl.exp(lg + comp - lse2[:, None]), 0.0)   # responsibilities
            pi = tl.where(kmask[None, :], tl.exp(lg - lse1[:, None]), 0.0)         # mixture weights
            gr = g[:, None] * r
            dx -= tl.sum(gr * z * isig, axis=1)
            g_lg, g_mu, g_ls = g[:, None] * (r - pi), gr * z * isig, gr * (z * z - 1.0)
            if HAS_GOUT:                                 # + the upstream gradients of the parameters
                gout = gout_ptr + (rows * D + d) * 3 * K
                g_lg += load_chunk(gout, rmask, ks, kmask)
                g_mu += load_chunk(gout + K, rmask, ks, kmask)
                g_ls += load_chunk(gout + 2 * K, rmask, ks, kmask)
            dh += head_chunk_grad(g_lg, h, vd, dvd, dbd, ks, kmask, hs, hmask, H)
            dh += head_chunk_grad(g_mu, h, vd + K * H, dvd + K * H, dbd + K, ks, kmask, hs, hmask, H)
            dh += head_chunk_grad(g_ls, h, vd + 2 * K * H, dvd + 2 * K * H, dbd + 2 * K, ks, kmask, hs, hmask, H)
        acc += dh * h * (1.0 - h)
        tl.store(dx_ptr + rows * D + d, dx, mask=rmask)
    tl.atomic_add(dc_ptr + hs, tl.sum(acc, axis=0), mask=hmask)


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------


def _check(W, c, V, b, order):
    if not isinstance(W, torch.Tensor) or W.dim() != 2:
        raise ValueError(f"W must have shape [H, D], got {getattr(W, 'shape', None)}")
    if not isinstance(V, torch.Tensor) or V.dim() != 4:
        raise ValueError(f"V must have shape [D, 3, K, H], got {getattr(V, 'shape', None)}")
    H, D = W.shape
    K = V.shape[2]
    device = check_params(W, c, V, b, (H, D), (D, 3, K, H), (D, 3, K))
    return H, D, K, device, check_order(order, D, device)


def rnade_forward(x, W, c, V, b, order, *, block_b=None, block_k=None):
    """log p(x) [B] and the mixture parameters [B, D, 3, K], both fp32."""
    H, D, K, device, order = _check(W, c, V, b, order)
    check_arg("x", x, (None, D), device)
    B = x.shape[0]
    logp = torch.empty(B, device=device, dtype=torch.float32)
    params = torch.empty(B, D, 3, K, device=device, dtype=torch.float32)
    if B:
        cfg = launch_config(B, H, K, block_b, block_k, heads=3)
        _rnade_fwd_kernel[grid(B, cfg)](x, W.t().contiguous(), c, V, b, order, logp, params, params,
                                        B, D, H, K, SAMPLE=False, **cfg)
    return logp, params


def rnade_backward(grad, x, W, c, V, b, order, params, grad_params=None, *, block_b=None, block_k=None):
    """Gradients (dW, dc, dV, db, dx) of ``sum(grad * log_prob) + sum(grad_params * params)``
    (``grad_params [B, D, 3, K]`` or None); dx in x's dtype."""
    H, D, K, device, order = _check(W, c, V, b, order)
    check_arg("x", x, (None, D), device)
    B = x.shape[0]
    check_arg("params", params, (B, D, 3, K), device, dtypes=(torch.float32,))
    grad = check_grad(grad, B, device)
    gout = check_grad_outputs(grad_params, "grad_params", (B, D, 3, K), device)
    f32 = dict(device=device, dtype=torch.float32)
    dWt, dc = torch.zeros(D, H, **f32), torch.zeros(H, **f32)
    dV, db = torch.zeros(D, 3, K, H, **f32), torch.zeros(D, 3, K, **f32)
    dx = torch.zeros(B, D, **f32)
    if B:
        cfg = launch_config(B, H, K, block_b, block_k, heads=3)
        _rnade_bwd_kernel[grid(B, cfg)](grad, x, W.t().contiguous(), c, V, order, params,
                                        params if gout is None else gout, dWt, dc, dV, db, dx, B, D, H, K,
                                        HAS_GOUT=gout is not None, **cfg)
    dt = W.dtype
    return dWt.t().contiguous().to(dt), dc.to(dt), dV.to(dt), db.to(dt), dx.to(x.dtype)


def rnade_sample(W, c, V, b, order, u, *, block_b=None, block_k=None):
    """Samples x [n, D] (parameter dtype) from uniforms u [n, D, 2], and their log p [n] (fp32)."""
    H, D, K, device, order = _check(W, c, V, b, order)
    check_arg("u", u, (None, D, 2), device, dtypes=(torch.float32, torch.float64, torch.float16,
                                                      torch.bfloat16))
    n = u.shape[0]
    x = torch.empty(n, D, device=device, dtype=W.dtype)
    logp = torch.empty(n, device=device, dtype=torch.float32)
    if n:
        cfg = launch_config(n, H, K, block_b, block_k, heads=3)
        scratch = torch.empty(n, 3, K, device=device, dtype=torch.float32)
        _rnade_fwd_kernel[grid(n, cfg)](u, W.t().contiguous(), c, V, b, order, logp, x, scratch,
                                        n, D, H, K, SAMPLE=True, **cfg)
    return x, logp
