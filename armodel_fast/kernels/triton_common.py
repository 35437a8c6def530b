"""Pieces shared by the Triton NADE kernels: device math and launcher checks.

Device side (``@triton.jit`` helpers, inlined into each kernel):

* :func:`softplus` with a precise ``log1p``, :func:`ndtri` (Phi^{-1} by
  Wichura's AS241, accurate to a few fp32 ulp);
* :func:`row_block` / :func:`hidden_block` - the row and hidden indices of one
  program (BLOCK_B batch rows x BLOCK_H hidden units, H padded to a power of 2
  with masks), :func:`init_hidden` (``a_0 = c`` in registers);
* :func:`head_chunk` - ``b[k] + V[k] . h`` for a chunk of BLOCK_K outputs of a
  ``[K, H]`` weight block, and its backward :func:`head_chunk_grad`;
  :func:`lse_update` (online logsumexp), :func:`stored_lse` and
  :func:`inverse_cdf` (the categorical sampling rule) so that heads with many
  outputs are processed chunk by chunk (K need not fit in registers).

Host side: argument checks shared by the launchers (dtype, device, shape,
contiguity; each error names the argument) and the block-size heuristics.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

PARAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# ---------------------------------------------------------------------------
# Device helpers
# ---------------------------------------------------------------------------


@triton.jit
def log1p(x):
    """log(1 + x) to full precision for small x (Goldberg's trick; no libdevice)."""
    u = 1.0 + x
    exact = u == 1.0
    return tl.where(exact, x, tl.log(u) * (x / tl.where(exact, 1.0, u - 1.0)))


@triton.jit
def softplus(x):
    """log(1 + exp(x)), stable for any x."""
    return tl.maximum(x, 0.0) + log1p(tl.exp(-tl.abs(x)))


@triton.jit
def ndtri(p):
    """Phi^{-1}(p) for p in (0, 1), evaluated in fp32: Wichura's AS241 (PPND16).

    AS241's rational approximations have relative error ~1e-16 and, unlike
    Acklam's (whose central-region denominator cancels to ~3e-3 near
    p = 0.025, costing ~4 digits in fp32), every polynomial has positive
    coefficients on a non-negative argument, so fp32 evaluation stays within
    a few ulp: measured max relative error 4e-7 against fp64 ndtri on
    [1e-6, 1 - 1e-6], the range the samplers clamp to.
    """
    q = p - 0.5
    r = 0.180625 - q * q                                 # central region |q| <= 0.425
    num = (((((((2509.0809287301226727 * r + 33430.575583588128105) * r + 67265.770927008700853) * r
                + 45921.953931549871457) * r + 13731.693765509461125) * r + 1971.5909503065514427) * r
             + 133.14166789178437745) * r + 3.387132872796366608)
    den = (((((((5226.495278852545925 * r + 28729.085735721942674) * r + 39307.89580009271061) * r
                + 21213.794301586595867) * r + 5394.1960214247511077) * r + 687.1870074920579083) * r
             + 42.313330701600911252) * r + 1.0)
    central = q * num / den
    rt = tl.sqrt(-tl.log(tl.maximum(tl.minimum(p, 1.0 - p), 1e-37)))
    r1 = rt - 1.6                                        # tails with rt <= 5 (p >= ~1.4e-11)
    num1 = (((((((7.7454501427834140764e-4 * r1 + 0.0227238449892691845833) * r1
                 + 0.24178072517745061177) * r1 + 1.27045825245236838258) * r1
               + 3.64784832476320460504) * r1 + 5.7694972214606914055) * r1
             + 4.6303378461565452959) * r1 + 1.42343711074968357734)
    den1 = (((((((1.05075007164441684324e-9 * r1 + 5.475938084995344946e-4) * r1
                 + 0.0151986665636164571966) * r1 + 0.14810397642748007459) * r1
               + 0.68976733498510000455) * r1 + 1.6763848301838038494) * r1
             + 2.05319162663775882187) * r1 + 1.0)
    r2 = rt - 5.0                                        # far tails
    num2 = (((((((2.01033439929228813265e-7 * r2 + 2.71155556874348757815e-5) * r2
                 + 0.0012426609473880784386) * r2 + 0.026532189526576123093) * r2
               + 0.29656057182850489123) * r2 + 1.7848265399172913358) * r2
             + 5.4637849111641143699) * r2 + 6.6579046435011037772)
    den2 = (((((((2.04426310338993978564e-15 * r2 + 1.4215117583164458887e-7) * r2
                 + 1.8463183175100546818e-5) * r2 + 7.868691311456132591e-4) * r2
               + 0.0148753612908506148525) * r2 + 0.13692988092273580531) * r2
             + 0.59983220655588793769) * r2 + 1.0)
    tail = tl.where(rt <= 5.0, num1 / den1, num2 / den2)
    tail = tl.where(q < 0.0, -tail, tail)
    return tl.where(tl.abs(q) <= 0.425, central, tail)


@triton.jit
def row_block(B, BLOCK_B: tl.constexpr):
    """Row indices (int64) of this program and their mask."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    return rows, rows < B


@triton.jit
def hidden_block(H, BLOCK_H: tl.constexpr):
    hs = tl.arange(0, BLOCK_H)
    return hs, hs < H


@triton.jit
def init_hidden(c_ptr, hs, hmask, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """``a_0 = c`` broadcast to [BLOCK_B, BLOCK_H] fp32 (padded units are 0)."""
    c = tl.load(c_ptr + hs, mask=hmask, other=0.0).to(tl.float32)
    return tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32) + c[None, :]


@triton.jit
def load_row(ptr, hs, hmask):
    """One contiguous length-H row (a W^T column or a V row) as fp32, zero-padded."""
    return tl.load(ptr + hs, mask=hmask, other=0.0).to(tl.float32)


@triton.jit
def head_chunk(h, v_ptr, b_ptr, ks, kmask, hs, hmask, H):
    """``b[k] + sum_j V[k, j] h[:, j]`` for the outputs ``ks`` of a [K, H] block.

    h: [BLOCK_B, BLOCK_H] fp32; returns [BLOCK_B, BLOCK_K] fp32 (padded k: 0).
    """
    v = tl.load(v_ptr + ks[:, None] * H + hs[None, :],
                mask=kmask[:, None] & hmask[None, :], other=0.0).to(tl.float32)
    bias = tl.load(b_ptr + ks, mask=kmask, other=0.0).to(tl.float32)
    return tl.sum(h[:, None, :] * v[None, :, :], axis=2) + bias[None, :]


@triton.jit
def chunk_matvec_t(g, v_ptr, ks, kmask, hs, hmask, H):
    """``sum_k g[:, k] V[k, :]`` for a chunk: g [BLOCK_B, BLOCK_K] -> [BLOCK_B, BLOCK_H]."""
    v = tl.load(v_ptr + ks[:, None] * H + hs[None, :],
                mask=kmask[:, None] & hmask[None, :], other=0.0).to(tl.float32)
    return tl.sum(g[:, :, None] * v[None, :, :], axis=1)


@triton.jit
def lse_update(m, s, vals):
    """Online logsumexp: fold vals [BLOCK_B, BLOCK_K] (-inf = absent) into (max m, sum s)."""
    m_new = tl.maximum(m, tl.max(vals, axis=1))
    s = s * tl.exp(m - m_new) + tl.sum(tl.exp(vals - m_new[:, None]), axis=1)
    return m_new, s


@triton.jit
def head_chunk_grad(gl, h, v_ptr, dv_ptr, db_ptr, ks, kmask, hs, hmask, H):
    """Backward of :func:`head_chunk` for an upstream gradient gl [BLOCK_B, BLOCK_K].

    Adds this block's ``db[k]`` and ``dV[k, :]`` into fp32 buffers laid out like
    ``b``/``V`` (atomics) and returns ``dh = gl @ V[ks]`` [BLOCK_B, BLOCK_H].
    """
    tl.atomic_add(db_ptr + ks, tl.sum(gl, axis=0), mask=kmask)
    tl.atomic_add(dv_ptr + ks[:, None] * H + hs[None, :], tl.sum(gl[:, :, None] * h[:, None, :], axis=0),
                  mask=kmask[:, None] & hmask[None, :])
    return chunk_matvec_t(gl, v_ptr, ks, kmask, hs, hmask, H)


@triton.jit
def load_chunk(base, rmask, ks, kmask):
    """Values ``base[row] + k`` of one K-chunk as fp32; padded rows read 0 (so stay finite)."""
    return tl.load(base[:, None] + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)


@triton.jit
def stored_lse(base, rmask, K, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """logsumexp over the K values stored at ``base[row] + k`` (fp32), chunk by chunk."""
    m = tl.full([BLOCK_B], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_B], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        m, s = lse_update(m, s, tl.where(kmask[None, :], load_chunk(base, rmask, ks, kmask), float("-inf")))
    return m + tl.log(s)


@triton.jit
def inverse_cdf(base, rmask, lse, u, K, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """Class ``#{k < K-1 : p_0 + ... + p_k <= u}`` for logits stored at ``base[row] + k``.

    ``p = exp(logit - lse)``; the rule of ``reference/heads.categorical_sample``.
    Returns int64 [BLOCK_B].
    """
    carry = tl.zeros([BLOCK_B], dtype=tl.float32)
    count = tl.zeros([BLOCK_B], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        p = tl.where(kmask[None, :], tl.exp(load_chunk(base, rmask, ks, kmask) - lse[:, None]), 0.0)
        cdf = carry[:, None] + tl.cumsum(p, axis=1)
        below = (cdf <= u[:, None]) & (ks[None, :] < K - 1)
        count += tl.sum(below.to(tl.int32), axis=1)
        carry += tl.sum(p, axis=1)
    return count.to(tl.int64)


# ---------------------------------------------------------------------------
# Host helpers
# ---------------------------------------------------------------------------


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but W is on {device}")


def check_arg(name: str, t, shape: tuple, device: torch.device, dtypes=PARAM_DTYPES) -> torch.Tensor:
    """Type, dtype, shape (None = any size), device and contiguity of one argument."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {t.dtype}")
    if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)):
        want = ", ".join("?" if s is None else str(s) for s in shape)
        raise ValueError(f"{name} must have shape [{want}], got {tuple(t.shape)}")
    check_device(name, t, device)
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")
    return t


def check_params(W, c, V, b, W_shape: tuple, V_shape: tuple, b_shape: tuple) -> torch.device:
    """Check ``W, c, V, b`` (one dtype, one device) and where they may run; return the device."""
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"W must be a torch.Tensor, got {type(W).__name__}")
    device = W.device
    if device.type == "cpu" and not interpreting():
        raise ValueError("Triton kernels need CUDA tensors; CPU tensors run only under the "
                         "Triton interpreter (TRITON_INTERPRET=1 set before importing triton)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"Triton kernels take CUDA tensors, got W on {device}")
    check_arg("W", W, W_shape, device)
    H = W_shape[0]
    for name, t, shape in (("c", c, (H,)), ("V", V, V_shape), ("b", b, b_shape)):
        check_arg(name, t, shape, device)
        if t.dtype != W.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but W has {W.dtype}; parameters share one dtype")
    return device


def check_order(order, D: int, device: torch.device) -> torch.Tensor:
    """int64 permutation of 0..D-1 on ``device`` (fully checked when given on the CPU)."""
    if not isinstance(order, torch.Tensor):
        raise TypeError(f"order must be a torch.Tensor, got {type(order).__name__}")
    if order.dtype.is_floating_point or order.dtype.is_complex or order.dtype == torch.bool:
        raise TypeError(f"order must hold integers, got dtype {order.dtype}")
    if order.dim() != 1 or order.numel() != D:
        raise ValueError(f"order must be a 1-D permutation of length D={D}, got shape {tuple(order.shape)}")
    if order.device.type == "cpu" and not torch.equal(torch.sort(order).values, torch.arange(D)):
        raise ValueError(f"order must be a permutation of 0..{D - 1}")
    return order.to(device=device, dtype=torch.int64).contiguous()


def check_grad(grad, B: int, device: torch.device) -> torch.Tensor:
    """Upstream gradient of log_prob [B] as contiguous fp32 (autograd often hands an expanded view)."""
    if not isinstance(grad, torch.Tensor) or not grad.dtype.is_floating_point:
        raise TypeError("grad must be a floating-point torch.Tensor")
    if grad.shape != (B,):
        raise ValueError(f"grad must have shape [{B}], got {tuple(grad.shape)}")
    check_device("grad", grad, device)
    return grad.to(torch.float32).contiguous()


def check_grad_outputs(grad, name: str, shape: tuple, device: torch.device):
    """Upstream gradient of the per-dimension outputs as contiguous fp32, or None."""
    if grad is None:
        return None
    if not isinstance(grad, torch.Tensor) or not grad.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point torch.Tensor or None")
    if tuple(grad.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(grad.shape)}")
    check_device(name, grad, device)
    return grad.to(torch.float32).contiguous()


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def launch_config(B: int, H: int, K: int = 1, block_b=None, block_k=None, heads: int = 1) -> dict:
    """Block sizes and warps; ``block_b``/``block_k`` override the heuristics (powers of 2).

    GPU: at most 4096 fp32 elements per [BLOCK_B, BLOCK_H] register tile (the
    backward keeps three such tiles live: ``a``, ``acc``, ``dh``) and 8192 per
    [BLOCK_B, BLOCK_K, BLOCK_H] head product, 8 warps once a tile exceeds 2048
    elements, the head budget shared by ``heads`` heads computed side by side
    (RNADE: 3). At H=500 that is BLOCK_B=8, BLOCK_K=2 (RNADE: 1); ptxas
    (sm_90) then reports <= 128 registers and no spills except 12 bytes in
    the RNADE backward (tests/test_triton_aot.py records registers and spills;
    BLOCK_B=16 spilled up to 2 KB in the backward kernels).
    Interpreter: one program holds as many rows as possible (its cost is per
    op, not per element).
    """
    BLOCK_H = max(16, next_pow2(H))
    if block_b is None:
        cap = 256 if interpreting() else max(1, min(16, 4096 // BLOCK_H))
        block_b = min(cap, next_pow2(B))
    if block_k is None:
        cap = 1 << 20 if interpreting() else max(1, 8192 // (heads * block_b * BLOCK_H))
        block_k = min(next_pow2(K), next_pow2(cap + 1) // 2)
    for name, v in (("block_b", block_b), ("block_k", block_k)):
        if v < 1 or v & (v - 1):
            raise ValueError(f"{name} must be a power of 2, got {v}")
    num_warps = 4 if block_b * BLOCK_H <= 2048 else 8
    return dict(BLOCK_B=block_b, BLOCK_H=BLOCK_H, BLOCK_K=block_k, num_warps=num_warps)


def grid(B: int, cfg: dict) -> tuple:
    return (triton.cdiv(B, cfg["BLOCK_B"]),)
