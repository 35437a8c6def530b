"""Triton kernels for binary NADE (docs/DESIGN.md section 2): log-prob, backward, sampling.

Launcher contract (used by ``armodel_fast.ops`` for ``backend="triton"``;
nothing here registers itself):

* Parameters ``W [H, D]``, ``c [H]``, ``V [D, H]``, ``b [D]``: contiguous, one
  dtype in (float32, float16, bfloat16), on a CUDA device - or on the CPU under
  ``TRITON_INTERPRET=1`` (set before triton is imported). ``order`` is an
  integer permutation of ``0..D-1`` on any device (fully checked when on the
  CPU, as ``_validate.check_order`` returns it). ``x [B, D]`` is a contiguous
  floating tensor holding 0/1 (values not checked: validate with
  ``_validate.check_binary_x`` first).
* All arithmetic is fp32 (low-precision inputs are upcast on load).
  ``log_prob`` and ``logits`` are fp32; gradients are accumulated in fp32 and
  returned in the parameter dtype; samples ``x`` have the parameter dtype.
* ``nade_forward(x, W, c, V, b, order) -> (log_prob [B], logits [B, D])``,
  logits in dimension space (``logits[:, d]`` is the logit of x_d).
* ``nade_backward(grad [B], x, W, c, V, b, order, logits, grad_logits=None) -> (dW, dc, dV, db)``:
  the gradient of ``sum(grad * log_prob) + sum(grad_logits * logits)``; ``logits`` are the
  forward's, ``grad_logits [B, D]`` (or None) the upstream gradient of the logits.
* ``nade_sample(W, c, V, b, order, u [n, D]) -> (x [n, D], log_prob [n])``:
  ``x_d = 1{u_d < sigmoid(logit_d)}``, all D steps in one launch.
* Every launcher takes optional ``block_b`` (rows per program, a power of 2)
  to override the heuristic in ``triton_common.launch_config``.

Kernel layout: one program per block of BLOCK_B rows (log-prob and sampling are
one kernel, ``SAMPLE`` a constexpr); the hidden pre-activation
``a`` [BLOCK_B, BLOCK_H] stays in registers while the kernel loops over the D
steps. ``W`` is passed transposed (``Wt = W.T`` contiguous, [D, H]) so that the
column ``W[:, d]`` is one coalesced row load. The backward rebuilds
``a_t = a_{t+1} - W[:, d] x_d`` walking t down from D-1 (after one pass that
sums ``a_D``), accumulates ``acc = sum_{t' >= t} da_t'`` in registers, and
adds each step's per-block sums into fp32 buffers with atomics (so fp32
gradients are not bitwise deterministic on a GPU).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import (check_arg, check_grad, check_grad_outputs, check_order, check_params, grid,
                            hidden_block, init_hidden, launch_config, load_row, row_block, softplus)


@triton.jit
def _nade_fwd_kernel(in_ptr, wt_ptr, c_ptr, v_ptr, b_ptr, order_ptr, logp_ptr, out_ptr,
                     B, D, H, SAMPLE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Log-prob (in = x, out = logits [B, D]) or, with SAMPLE, sampling (in = u, out = x)."""
    rows, rmask = row_block(B, BLOCK_B)
    hs, hmask = hidden_block(H, BLOCK_H)
    a = init_hidden(c_ptr, hs, hmask, BLOCK_B, BLOCK_H)
    lp = tl.zeros([BLOCK_B], dtype=tl.float32)
    for t in range(D):
        d = tl.load(order_ptr + t)
        h = tl.sigmoid(a)
        v = load_row(v_ptr + d * H, hs, hmask)
        logit = tl.sum(h * v[None, :], axis=1) + tl.load(b_ptr + d).to(tl.float32)
        if SAMPLE:
            ud = tl.load(in_ptr + rows * D + d, mask=rmask, other=1.0).to(tl.float32)
            xd = (ud < tl.sigmoid(logit)).to(tl.float32)
            tl.store(out_ptr + rows * D + d, xd.to(out_ptr.dtype.element_ty), mask=rmask)
        else:
            xd = tl.load(in_ptr + rows * D + d, mask=rmask, other=0.0).to(tl.float32)
            tl.store(out_ptr + rows * D + d, logit, mask=rmask)
        lp += xd * logit - softplus(logit)
        a += xd[:, None] * load_row(wt_ptr + d * H, hs, hmask)[None, :]
    tl.store(logp_ptr + rows, lp, mask=rmask)


@triton.jit
def _nade_bwd_kernel(grad_ptr, x_ptr, wt_ptr, c_ptr, v_ptr, order_ptr, logits_ptr, gout_ptr,
                     dwt_ptr, dc_ptr, dv_ptr, db_ptr,
                     B, D, H, HAS_GOUT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    rows, rmask = row_block(B, BLOCK_B)
    hs, hmask = hidden_block(H, BLOCK_H)
    a = init_hidden(c_ptr, hs, hmask, BLOCK_B, BLOCK_H)
    for j in range(D):                                   # a_D (order does not matter)
        xj = tl.load(x_ptr + rows * D + j, mask=rmask, other=0.0).to(tl.float32)
        a += xj[:, None] * load_row(wt_ptr + j * H, hs, hmask)[None, :]
    g = tl.load(grad_ptr + rows, mask=rmask, other=0.0)  # 0 on padded rows: they add nothing
    acc = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
    for i in range(D):
        d = tl.load(order_ptr + (D - 1 - i))
        xd = tl.load(x_ptr + rows * D + d, mask=rmask, other=0.0).to(tl.float32)
        a -= xd[:, None] * load_row(wt_ptr + d * H, hs, hmask)[None, :]       # a_t
        # a_{t+1} = a_t + W[:, d] x_d feeds the steps after t, whose da are in acc
        tl.atomic_add(dwt_ptr + d * H + hs, tl.sum(acc * xd[:, None], axis=0), mask=hmask)
        h = tl.sigmoid(a)
        logit = tl.load(logits_ptr + rows * D + d, mask=rmask, other=0.0)
        gl = g * (xd - tl.sigmoid(logit))                 # d(grad * log p)/d logit_t
        if HAS_GOUT:                                     # + the upstream gradient of the logit itself
            gl += tl.load(gout_ptr + rows * D + d, mask=rmask, other=0.0)
        tl.atomic_add(db_ptr + d, tl.sum(gl, axis=0))
        tl.atomic_add(dv_ptr + d * H + hs, tl.sum(gl[:, None] * h, axis=0), mask=hmask)
        v = load_row(v_ptr + d * H, hs, hmask)
        acc += gl[:, None] * v[None, :] * h * (1.0 - h)
    tl.atomic_add(dc_ptr + hs, tl.sum(acc, axis=0), mask=hmask)


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------


def _check(W, c, V, b, order):
    if not isinstance(W, torch.Tensor) or W.dim() != 2:
        raise ValueError(f"W must have shape [H, D], got {getattr(W, 'shape', None)}")
    H, D = W.shape
    device = check_params(W, c, V, b, (H, D), (D, H), (D,))
    return H, D, device, check_order(order, D, device)


def _config(B, H, block_b):
    cfg = launch_config(B, H, 1, block_b=block_b)
    cfg.pop("BLOCK_K")
    return cfg


def nade_forward(x, W, c, V, b, order, *, block_b=None):
    """log p(x) [B] and logits [B, D], both fp32 (see the module docstring)."""
    H, D, device, order = _check(W, c, V, b, order)
    check_arg("x", x, (None, D), device)
    B = x.shape[0]
    logp = torch.empty(B, device=device, dtype=torch.float32)
    logits = torch.empty(B, D, device=device, dtype=torch.float32)
    if B:
        cfg = _config(B, H, block_b)
        _nade_fwd_kernel[grid(B, cfg)](x, W.t().contiguous(), c, V, b, order, logp, logits,
                                       B, D, H, SAMPLE=False, **cfg)
    return logp, logits


def nade_backward(grad, x, W, c, V, b, order, logits, grad_logits=None, *, block_b=None):
    """Gradients (dW, dc, dV, db) of ``sum(grad * log_prob) + sum(grad_logits * logits)``, in the
    parameter dtype."""
    H, D, device, order = _check(W, c, V, b, order)
    check_arg("x", x, (None, D), device)
    B = x.shape[0]
    check_arg("logits", logits, (B, D), device, dtypes=(torch.float32,))
    grad = check_grad(grad, B, device)
    gout = check_grad_outputs(grad_logits, "grad_logits", (B, D), device)
    f32 = dict(device=device, dtype=torch.float32)
    dWt, dc = torch.zeros(D, H, **f32), torch.zeros(H, **f32)
    dV, db = torch.zeros(D, H, **f32), torch.zeros(D, **f32)
    if B:
        cfg = _config(B, H, block_b)
        _nade_bwd_kernel[grid(B, cfg)](grad, x, W.t().contiguous(), c, V, order, logits,
                                       logits if gout is None else gout, dWt, dc, dV, db, B, D, H,
                                       HAS_GOUT=gout is not None, **cfg)
    dt = W.dtype
    return dWt.t().contiguous().to(dt), dc.to(dt), dV.to(dt), db.to(dt)


def nade_sample(W, c, V, b, order, u, *, block_b=None):
    """Samples x [n, D] (parameter dtype) from uniforms u [n, D], and their log p [n] (fp32)."""
    H, D, device, order = _check(W, c, V, b, order)
    check_arg("u", u, (None, D), device, dtypes=(torch.float32, torch.float64, torch.float16,
                                                   torch.bfloat16))
    n = u.shape[0]
    x = torch.empty(n, D, device=device, dtype=W.dtype)
    logp = torch.empty(n, device=device, dtype=torch.float32)
    if n:
        cfg = _config(n, H, block_b)
        _nade_fwd_kernel[grid(n, cfg)](u, W.t().contiguous(), c, V, b, order, logp, x,
                                       n, D, H, SAMPLE=True, **cfg)
    return x, logp
