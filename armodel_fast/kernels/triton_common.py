"""Pieces shared by the Triton NADE kernels: device math and launcher checks.

Device side (``@triton.jit`` helpers, inlined into each kernel):

* :func:`softplus` with a precise ``log1p``, :func:`ndtri` (Acklam's rational
  approximation of Phi^{-1}, relative error < 1.2e-9 before fp32 rounding);
* :func:`row_block` / :func:`hidden_block` - the row and hidden indices of one
  program (BLOCK_B batch rows x BLOCK_H hidden units, H padded to a power of 2
  with masks), :func:`init_hidden` (``a_0 = c`` in registers);
* :func:`head_chunk` - ``b[k] + V[k] . h`` for a chunk of BLOCK_K outputs of a
  ``[K, H]`` weight block, and :func:`lse_update` (online logsumexp) so that
  heads with many outputs are processed chunk by chunk.

Host side: argument checks shared by the launchers (dtype, device, shape,
contiguity; each error names the argument) and the block-size heuristics.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

PARAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
U_EPS = 1e-6  # same clamp as reference/heads.py before Phi^{-1}
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

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
    """Phi^{-1}(p) for p in (0, 1), fp32 (P. J. Acklam's algorithm, no refinement).

    The rational approximation has relative error below 1.15e-9, far under
    fp32 resolution, so the result agrees with ``torch.special.ndtri`` to a
    few ulp on the clamped range [1e-6, 1 - 1e-6] used by the samplers.
    The tails use ``q = sqrt(-2 log(min(p, 1 - p)))``; ``1 - p`` is exact in
    fp32 for p >= 0.5.
    """
    q = p - 0.5
    r = q * q
    num = ((((-3.969683028665376e+01 * r + 2.209460984245205e+02) * r - 2.759285104469687e+02) * r
            + 1.383577518672690e+02) * r - 3.066479806614716e+01) * r + 2.506628277459239e+00
    den = ((((-5.447609879822406e+01 * r + 1.615858368580409e+02) * r - 1.556989798598866e+02) * r
            + 6.680131188771972e+01) * r - 1.328068155288572e+01) * r + 1.0
    central = num * q / den
    pt = tl.minimum(p, 1.0 - p)
    s = tl.sqrt(-2.0 * tl.log(tl.maximum(pt, 1e-30)))
    tnum = ((((-7.784894002430293e-03 * s - 3.223964580411365e-01) * s - 2.400758277161838e+00) * s
             - 2.549732539343734e+00) * s + 4.374664141464968e+00) * s + 2.938163982698783e+00
    tden = (((7.784695709041462e-03 * s + 3.224671290700398e-01) * s + 2.445134137142996e+00) * s
            + 3.754408661907416e+00) * s + 1.0
    tail = tnum / tden                       # the lower-tail value (negative)
    tail = tl.where(p < 0.5, tail, -tail)
    return tl.where(pt < 0.02425, tail, central)


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


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def launch_config(B: int, H: int, K: int = 1, block_b=None, block_k=None) -> dict:
    """Block sizes and warps; ``block_b``/``block_k`` override the heuristics (powers of 2).

    GPU: ~16K fp32 elements per [BLOCK_B, BLOCK_H] register tile and per
    [BLOCK_B, BLOCK_K, BLOCK_H] head product. Interpreter: one program holds
    as many rows as possible (the interpreter's cost is per op, not per element).
    """
    BLOCK_H = max(16, next_pow2(H))
    budget = 1 << 14
    if block_b is None:
        cap = 256 if interpreting() else max(1, min(16, budget // BLOCK_H))
        block_b = min(cap, next_pow2(B))
    if block_k is None:
        cap = 1 << 20 if interpreting() else max(1, budget // (block_b * BLOCK_H))
        block_k = min(next_pow2(K), next_pow2(cap + 1) // 2)
    for name, v in (("block_b", block_b), ("block_k", block_k)):
        if v < 1 or v & (v - 1):
            raise ValueError(f"{name} must be a power of 2, got {v}")
    num_warps = 4 if block_b * BLOCK_H <= 4096 else 8
    return dict(BLOCK_B=block_b, BLOCK_H=BLOCK_H, BLOCK_K=block_k, num_warps=num_warps)


def grid(B: int, cfg: dict) -> tuple:
    return (triton.cdiv(B, cfg["BLOCK_B"]),)
