"""Triton masked linear layer: ``y = act(x @ (W * M).T + bias)`` on degree-sorted units.

``M[k, j] = 1{out_deg[k] >= in_deg[j]}`` (``>`` when strict) is computed inside
each tile from two small degree-vector loads and a compare: no ``[out, in]``
mask is read, ``W * M`` is never formed (masked weights are not even loaded).
The launchers take units sorted by degree (the op layer
``armodel_fast.ops.masked_linear`` sorts, caches and un-permutes), so the mask
is a staircase: sorted row n reaches the inputs ``[0, reach[n])``, input k is
reached by the rows ``[col_start[k], N)`` (:func:`staircase`). From the first
and last unit/input of a tile that classifies it as all zero (skipped: its loop
iteration does not exist), all one (no compare) or mixed (compare); the bounds
are loop limits, so the loops stay plain pipelined loops.

Kernels (M: batch, N: out units, K: inputs):
``_ml_fwd_kernel`` y tile [BLOCK_M, BLOCK_N], loop over K (all-one, then mixed
tiles), fused bias + activation; ``_ml_dact_kernel`` ``g = dy * act'(y)`` (act'
from the saved output) and per-M-tile partial sums of db; ``_ml_dx_kernel``
``dx = g @ (W*M)`` tile [BLOCK_M, BLOCK_K], loop over N from the first row
reaching the tile (mixed, then all-one tiles); ``_ml_dw_kernel``
``dW = (g.T @ x) * M`` tile [BLOCK_N, BLOCK_K], loop over the batch, none for an
all-zero tile (zeros stored), no mask for an all-one tile.

Precision: products accumulate in fp32 (fp64 for fp64 inputs, which gradcheck
uses); fp32 ``tl.dot`` runs in full fp32 ("ieee", like F.linear with TF32 off)
unless ``input_precision`` says "tf32x3"/"tf32"; fp16/bf16 results are rounded
once at the store. The per-element math (mask test, activations, dot, store) is
``masked_linear_math.py``, shared with the MADE sampler. ``tile_counts`` (a dict) makes the kernels count the tiles
they compute (atomics; for tests and benchmarks).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .masked_linear_math import ACT_CODES, activate, activation_grad, connected, mma, to_out
from .triton_common import interpreting, next_pow2

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
PRECISIONS = ("ieee", "tf32x3", "tf32")  # tl.dot input_precision of fp32 inputs


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------


@triton.jit
def _ml_fwd_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, in_deg_ptr, out_deg_ptr, reach_ptr, count_ptr, B, N, K,
                   STRICT: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, COUNT: tl.constexpr,
                   ACC: tl.constexpr, PRECISION: tl.constexpr, INTERP_BF16: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rm = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    n0 = tl.program_id(1) * BLOCK_N
    rn = n0 + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok, n_ok = rm < B, rn < N
    r_first = tl.load(reach_ptr + n0)                            # every row reaches [0, r_first)
    k_hi = tl.load(reach_ptr + tl.minimum(n0 + BLOCK_N, N) - 1)  # some row reaches [0, k_hi)
    k_full = tl.where(r_first >= K, K, (r_first // BLOCK_K) * BLOCK_K)
    out_deg = tl.load(out_deg_ptr + rn, mask=n_ok, other=0)
    x_ptrs = x_ptr + rm[:, None] * K + rk[None, :]
    w_ptrs = w_ptr + rn[None, :].to(tl.int64) * K + rk[:, None]   # (W^T) tile [BLOCK_K, BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    n_one, n_mixed = 0, 0
    for k0 in range(0, k_full, BLOCK_K):                        # all-one tiles: no compare
        k_ok = (k0 + rk) < K
        xt = tl.load(x_ptrs + k0, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        wt = tl.load(w_ptrs + k0, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = mma(xt, wt, acc, ACC, PRECISION, INTERP_BF16)
        n_one += 1
    for k0 in range(k_full, k_hi, BLOCK_K):                     # mixed tiles; beyond k_hi: all zero
        k_ok = (k0 + rk) < K
        in_deg = tl.load(in_deg_ptr + k0 + rk, mask=k_ok, other=0)
        keep = connected(out_deg[None, :], in_deg[:, None], STRICT) & k_ok[:, None] & n_ok[None, :]
        xt = tl.load(x_ptrs + k0, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        wt = tl.load(w_ptrs + k0, mask=keep, other=0.0)
        acc = mma(xt, wt, acc, ACC, PRECISION, INTERP_BF16)
        n_mixed += 1
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(ACC)[None, :]
    acc = activate(acc, ACT)
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], to_out(acc, y_ptr, INTERP_BF16),
             mask=m_ok[:, None] & n_ok[None, :])
    if COUNT:
        tl.atomic_add(count_ptr, n_one)
        tl.atomic_add(count_ptr + 1, n_mixed)


@triton.jit
def _ml_dact_kernel(dy_ptr, y_ptr, g_ptr, dbp_ptr, B, N, ACT: tl.constexpr, STORE_G: tl.constexpr,
                    HAS_DB: tl.constexpr, ACC: tl.constexpr, INTERP_BF16: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rm = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = (rm < B)[:, None] & (rn < N)[None, :]
    offs = rm[:, None] * N + rn[None, :]
    g = tl.load(dy_ptr + offs, mask=ok, other=0.0).to(ACC)
    if ACT != 0:
        g = g * activation_grad(tl.load(y_ptr + offs, mask=ok, other=0.0).to(ACC), ACT)
    if STORE_G:
        tl.store(g_ptr + offs, to_out(g, g_ptr, INTERP_BF16), mask=ok)
    if HAS_DB:
        tl.store(dbp_ptr + tl.program_id(0) * N + rn, tl.sum(g, axis=0), mask=rn < N)


@triton.jit
def _ml_dx_kernel(g_ptr, w_ptr, dx_ptr, in_deg_ptr, out_deg_ptr, col_start_ptr, count_ptr, B, N, K,
                  STRICT: tl.constexpr, COUNT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                  INTERP_BF16: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rm = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    k0 = tl.program_id(1) * BLOCK_K
    rk = k0 + tl.arange(0, BLOCK_K)
    rn = tl.arange(0, BLOCK_N)
    m_ok, k_ok = rm < B, rk < K
    c_first = tl.load(col_start_ptr + k0)                               # rows >= c_first reach column k0
    c_last = tl.load(col_start_ptr + tl.minimum(k0 + BLOCK_K, K) - 1)   # rows >= c_last reach all columns
    n_lo = tl.where(c_first >= N, N, (c_first // BLOCK_N) * BLOCK_N)
    n_full = tl.cdiv(c_last, BLOCK_N) * BLOCK_N
    in_deg = tl.load(in_deg_ptr + rk, mask=k_ok, other=0)
    g_ptrs = g_ptr + rm[:, None] * N + rn[None, :]
    w_ptrs = w_ptr + rn[:, None].to(tl.int64) * K + rk[None, :]          # W tile [BLOCK_N, BLOCK_K]
    acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=ACC)
    n_one, n_mixed = 0, 0
    for n0 in range(n_lo, tl.minimum(n_full, N), BLOCK_N):      # mixed tiles (rows below n_lo: zero)
        n_ok = (n0 + rn) < N
        out_deg = tl.load(out_deg_ptr + n0 + rn, mask=n_ok, other=0)
        keep = connected(out_deg[:, None], in_deg[None, :], STRICT) & n_ok[:, None] & k_ok[None, :]
        gt = tl.load(g_ptrs + n0, mask=m_ok[:, None] & n_ok[None, :], other=0.0)
        wt = tl.load(w_ptrs + tl.cast(n0, tl.int64) * K, mask=keep, other=0.0)
        acc = mma(gt, wt, acc, ACC, PRECISION, INTERP_BF16)
        n_mixed += 1
    for n0 in range(n_full, N, BLOCK_N):                        # all-one tiles: no compare
        n_ok = (n0 + rn) < N
        gt = tl.load(g_ptrs + n0, mask=m_ok[:, None] & n_ok[None, :], other=0.0)
        wt = tl.load(w_ptrs + tl.cast(n0, tl.int64) * K, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        acc = mma(gt, wt, acc, ACC, PRECISION, INTERP_BF16)
        n_one += 1
    tl.store(dx_ptr + rm[:, None] * K + rk[None, :], to_out(acc, dx_ptr, INTERP_BF16),
             mask=m_ok[:, None] & k_ok[None, :])
    if COUNT:
        tl.atomic_add(count_ptr, n_one)
        tl.atomic_add(count_ptr + 1, n_mixed)


@triton.jit
def _ml_dw_kernel(g_ptr, x_ptr, dw_ptr, in_deg_ptr, out_deg_ptr, reach_ptr, count_ptr, B, N, K,
                  STRICT: tl.constexpr, COUNT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                  INTERP_BF16: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    n0 = tl.program_id(0) * BLOCK_N
    k0 = tl.program_id(1) * BLOCK_K
    rn = n0 + tl.arange(0, BLOCK_N)
    rk = k0 + tl.arange(0, BLOCK_K)
    rb = tl.arange(0, BLOCK_M)
    n_ok, k_ok = rn < N, rk < K
    k_end = tl.minimum(k0 + BLOCK_K, K)
    r_first = tl.load(reach_ptr + n0)                                   # >= k_end: all-one tile
    r_last = tl.load(reach_ptr + tl.minimum(n0 + BLOCK_N, N) - 1)       # <= k0: all-zero tile
    g_ptrs = g_ptr + rb[None, :].to(tl.int64) * N + rn[:, None]         # (g^T) tile [BLOCK_N, BLOCK_M]
    x_ptrs = x_ptr + rb[:, None].to(tl.int64) * K + rk[None, :]         # x tile [BLOCK_M, BLOCK_K]
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=ACC)
    for b0 in range(0, tl.where(r_last <= k0, 0, B), BLOCK_M):
        b_ok = (b0 + rb) < B
        gt = tl.load(g_ptrs + tl.cast(b0, tl.int64) * N, mask=n_ok[:, None] & b_ok[None, :], other=0.0)
        xt = tl.load(x_ptrs + tl.cast(b0, tl.int64) * K, mask=b_ok[:, None] & k_ok[None, :], other=0.0)
        acc = mma(gt, xt, acc, ACC, PRECISION, INTERP_BF16)
    if r_first < k_end:
        out_deg = tl.load(out_deg_ptr + rn, mask=n_ok, other=0)
        in_deg = tl.load(in_deg_ptr + rk, mask=k_ok, other=0)
        acc = tl.where(connected(out_deg[:, None], in_deg[None, :], STRICT), acc, 0.0)
    tl.store(dw_ptr + rn[:, None].to(tl.int64) * K + rk[None, :], to_out(acc, dw_ptr, INTERP_BF16),
             mask=n_ok[:, None] & k_ok[None, :])
    if COUNT:
        tl.atomic_add(count_ptr, (r_first >= k_end).to(tl.int32))
        tl.atomic_add(count_ptr + 1, ((r_first < k_end) & (r_last > k0)).to(tl.int32))


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------


def staircase(in_deg: torch.Tensor, out_deg: torch.Tensor, strict: bool):
    """``(in_deg, out_deg, reach [N], col_start [K])``, all int32, of ascending integer degree
    vectors: sorted row n is connected to the inputs ``[0, reach[n])``, input k to the rows
    ``[col_start[k], N)``. Checks the order; degrees beyond int32 are replaced by their ranks among
    both vectors (the mask depends only on how degrees compare)."""
    for name, d in (("in_deg", in_deg), ("out_deg", out_deg)):
        if d.numel() > 1 and not bool((d[1:] >= d[:-1]).all()):
            raise ValueError(f"{name} must be sorted ascending (the op layer sorts units by degree)")
    both = torch.cat([in_deg.reshape(-1), out_deg.reshape(-1)])
    if both.numel() and not (-2 ** 31 <= int(both.min()) and int(both.max()) < 2 ** 31):
        ranks = torch.unique(both, sorted=True, return_inverse=True)[1]
        in_deg, out_deg = ranks[:in_deg.numel()], ranks[in_deg.numel():]
    in_deg, out_deg = in_deg.to(torch.int32).contiguous(), out_deg.to(torch.int32).contiguous()
    reach = torch.searchsorted(in_deg, out_deg, right=not strict).to(torch.int32)
    col_start = torch.searchsorted(out_deg, in_deg, right=strict).to(torch.int32)
    return in_deg, out_deg, reach, col_start


def _pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, next_pow2(n)))


# Largest output tile (elements) per kernel and dtype class whose sm_90 build showed
# no register spills in ptxas (fp32 "ieee" dots run on the FMA units, not tensor cores);
# fwd 128 x 128 with tanh spills 12 bytes (fp16/bf16).
_MAX_TILE = {"16bit": dict(fwd=1 << 14, dx=1 << 13, dw=1 << 14), "fp32": dict(fwd=1 << 12, dx=1 << 12, dw=1 << 14),
             "fp64": dict(fwd=1 << 10, dx=1 << 10, dw=1 << 10)}


def launch_config(kind: str, B: int, N: int, K: int, dtype=torch.float32, blocks=None) -> dict:
    """Block sizes and warps of one kernel (``kind``: fwd, dact, dx, dw).

    ``blocks=(BLOCK_M, BLOCK_N, BLOCK_K)`` (batch, out units, inputs; powers of
    2, >= 16 as ``tl.dot`` needs) overrides the heuristic: output tiles up to
    ``_MAX_TILE`` (128 x 128 for fp16/bf16, 64 x 64 for fp32, 32 x 32 for fp64),
    halved while the grid has fewer than 64 programs (down to 32), the reduced
    dimension in steps of 32 (16 for fp64), 8 warps from 4096 tile elements.
    Sized from ptxas reports only: not yet timed on a GPU.
    """
    if blocks is not None:
        if len(blocks) != 3 or any(not isinstance(b, int) or b < 16 or b & (b - 1) for b in blocks):
            raise ValueError(f"blocks must be 3 powers of 2 >= 16 (BLOCK_M, BLOCK_N, BLOCK_K), got {blocks}")
        bm, bn, bk = blocks
    elif kind == "dact":
        bm, bn, bk = 32, _pow2(N, 16, 128), 16
    else:  # tile (ta, tb) over dims (a, b), loop step tr over the reduced dim r
        a, b, r = {"fwd": (B, N, K), "dx": (B, K, N), "dw": (N, K, B)}[kind]
        ta, tb = _pow2(a, 16, 128), _pow2(b, 16, 128)
        cls = "fp64" if dtype == torch.float64 else "fp32" if dtype == torch.float32 else "16bit"
        while ta * tb > _MAX_TILE[cls][kind] or (triton.cdiv(a, ta) * triton.cdiv(b, tb) < 64 and max(ta, tb) > 32):
            ta, tb = (ta // 2, tb) if ta >= tb else (ta, tb // 2)
        tr = _pow2(r, 16, 16 if cls == "fp64" else 32)
        bm, bn, bk = {"fwd": (ta, tb, tr), "dx": (ta, tr, tb), "dw": (tr, ta, tb)}[kind]
    if kind == "dact":
        return dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=4)
    tile = {"fwd": bm * bn, "dx": bm * bk, "dw": bn * bk}[kind]
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=8 if tile >= 4096 else 4, num_stages=3)


def _tensor(name, t, shape, device, dtype=None):
    """Type, dtype (None: any of DTYPES), shape, device and contiguity of one argument."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype if dtype is not None else t.dtype not in DTYPES:
        want = dtype or "float32, float16, bfloat16 or float64"
        raise TypeError(f"{name} must have dtype {want}, got {t.dtype}")
    if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)):
        raise ValueError(f"{name} must have shape {['?' if s is None else s for s in shape]}, got {list(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but w is on {device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")
    return t


def _degrees(name, d, n, device):
    if not isinstance(d, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer degrees, got {type(d).__name__}")
    if d.dtype.is_floating_point or d.dtype.is_complex or d.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer degrees, got dtype {d.dtype}")
    return _tensor(name, d, (n,), device, d.dtype)


def _check(x, w, bias, in_deg, out_deg, strict, activation, reach, col_start, input_precision):
    """Validated ``(B, N, K, act, in_deg, out_deg, reach, col_start)``; every error names its argument."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    device = w.device
    if device.type == "cpu" and not interpreting():
        raise ValueError("Triton kernels need CUDA tensors (w is on the CPU); CPU tensors run only under "
                         "the Triton interpreter (TRITON_INTERPRET=1 set before importing triton)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"Triton kernels take CUDA tensors, got w on {device}")
    N, K = _tensor("w", w, (None, None), device).shape
    B = _tensor("x", x, (None, K), device, w.dtype).shape[0]
    if bias is not None:
        _tensor("bias", bias, (N,), device, w.dtype)
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    act = ACT_CODES.get(activation) if isinstance(activation, str) else activation
    if act not in ACT_CODES.values() or isinstance(act, bool):
        raise ValueError(f"activation must be one of {tuple(ACT_CODES)} (or its code 0..3), got {activation!r}")
    if input_precision not in PRECISIONS:
        raise ValueError(f"input_precision must be one of {PRECISIONS}, got {input_precision!r}")
    in_deg, out_deg = _degrees("in_deg", in_deg, K, device), _degrees("out_deg", out_deg, N, device)
    if reach is None or col_start is None:  # not from the op layer's cache: checked and built here
        in_deg, out_deg, reach, col_start = staircase(in_deg, out_deg, strict)
    else:
        _tensor("reach", reach, (N,), device, torch.int32)
        _tensor("col_start", col_start, (K,), device, torch.int32)
        if in_deg.dtype != torch.int32 or out_deg.dtype != torch.int32:
            raise TypeError("in_deg and out_deg must be int32 when reach/col_start are given (see staircase)")
    return B, N, K, act, in_deg, out_deg, reach, col_start


def _numerics(dtype, input_precision):
    """Constexprs ACC (accumulator type), PRECISION (of fp32 dots), INTERP_BF16 (mma, to_out)."""
    return dict(ACC=tl.float64 if dtype == torch.float64 else tl.float32,
                PRECISION=input_precision if dtype == torch.float32 else "ieee",
                INTERP_BF16=interpreting() and dtype == torch.bfloat16)


def _launch(kernel, kind, grid, n_loop, tile_counts, device, args, **consts):
    """Launch; with ``tile_counts`` (a dict) also record ``tile_counts[kind]`` = counts of
    the (out x in) tiles computed all-one / mixed and skipped (all zero), over all programs."""
    buf = torch.zeros(2, dtype=torch.int32, device=device)
    kernel[grid](*args[:-3], buf, *args[-3:], COUNT=tile_counts is not None, **consts)
    if tile_counts is not None:
        one, mixed = (int(v) for v in buf.tolist())
        total = grid[0] * grid[1] * n_loop
        tile_counts[kind] = dict(one=one, mixed=mixed, skipped=total - one - mixed, total=total)


def masked_linear_forward(x, w, bias, in_deg, out_deg, strict, activation, *, reach=None, col_start=None,
                          blocks=None, input_precision="ieee", tile_counts=None):
    """``y = act(x @ (w * M).T + bias)`` [B, N] in x's dtype, everything degree-sorted.

    x [B, K], w [N, K], bias [N] or None (one dtype, contiguous); in_deg [K] and
    out_deg [N] ascending integer degrees; ``reach``/``col_start`` with int32
    degrees from :func:`staircase` (built, after the checks, when not given).
    ``input_precision`` of fp32 dots: "ieee" (default, matches F.linear with TF32
    off), "tf32x3" or "tf32"; ``blocks``, ``tile_counts``: see :func:`launch_config`, :func:`_launch`.
    """
    B, N, K, act, in_deg, out_deg, reach, _ = _check(x, w, bias, in_deg, out_deg, strict, activation, reach,
                                                     col_start, input_precision)
    if min(B, N, K) == 0:  # nothing to reduce: act(bias)
        return _torch_act(x.new_zeros(B, N) if bias is None else bias.expand(B, N).clone(), act)
    y = torch.empty(B, N, dtype=x.dtype, device=x.device)
    cfg = launch_config("fwd", B, N, K, x.dtype, blocks)
    grid = (triton.cdiv(B, cfg["BLOCK_M"]), triton.cdiv(N, cfg["BLOCK_N"]))
    _launch(_ml_fwd_kernel, "fwd", grid, triton.cdiv(K, cfg["BLOCK_K"]), tile_counts, x.device,
            (x, w, w if bias is None else bias, y, in_deg, out_deg, reach, B, N, K), STRICT=strict, ACT=act,
            HAS_BIAS=bias is not None, **_numerics(x.dtype, input_precision), **cfg)
    return y


def masked_linear_backward(grad_y, x, w, y, in_deg, out_deg, strict, activation, *, need_dx=True,
                           need_dw=True, need_db=True, reach=None, col_start=None, blocks=None,
                           input_precision="ieee", tile_counts=None):
    """``(dx [B, K], dW [N, K], db [N])`` of :func:`masked_linear_forward` (None where not needed).

    grad_y [B, N] (any float dtype; used in x's), y the forward output (needed
    for an activation: act' is taken from it); all degree-sorted like the
    forward. dW is masked (zero outside M); db is summed in fp32 (fp64).
    """
    B, N, K, act, in_deg, out_deg, reach, col_start = _check(x, w, None, in_deg, out_deg, strict, activation,
                                                             reach, col_start, input_precision)
    dev, dt = x.device, x.dtype
    gy = _tensor("grad_y", grad_y if not isinstance(grad_y, torch.Tensor) else grad_y.contiguous(), (B, N), dev)
    gy = gy.to(dt)
    if act != 0:
        if y is None:
            raise ValueError("y (the forward output) is required with an activation")
        _tensor("y", y, (B, N), dev, dt)
    num, empty = _numerics(dt, input_precision), min(B, N, K) == 0
    g, db = gy, None
    if need_db or (act != 0 and (need_dx or need_dw) and not empty):
        store_g = act != 0 and (need_dx or need_dw)
        cfg = launch_config("dact", B, N, K, dt, blocks)
        grid = (triton.cdiv(B, cfg["BLOCK_M"]), triton.cdiv(N, cfg["BLOCK_N"]))
        g = torch.empty_like(gy) if store_g else gy
        dbp = torch.zeros(max(grid[0], 1), N, dtype=torch.float64 if dt == torch.float64 else torch.float32,
                          device=dev)
        if B and N:
            _ml_dact_kernel[grid](gy, gy if act == 0 else y, g, dbp, B, N, ACT=act, STORE_G=store_g,
                                  HAS_DB=need_db, ACC=num["ACC"], INTERP_BF16=num["INTERP_BF16"], **cfg)
        db = dbp.sum(0).to(dt) if need_db else None
    dx = torch.zeros(B, K, dtype=dt, device=dev) if need_dx and empty else None
    dw = torch.zeros(N, K, dtype=dt, device=dev) if need_dw and empty else None
    if need_dx and not empty:
        dx = torch.empty(B, K, dtype=dt, device=dev)
        cfg = launch_config("dx", B, N, K, dt, blocks)
        grid = (triton.cdiv(B, cfg["BLOCK_M"]), triton.cdiv(K, cfg["BLOCK_K"]))
        _launch(_ml_dx_kernel, "dx", grid, triton.cdiv(N, cfg["BLOCK_N"]), tile_counts, dev,
                (g, w, dx, in_deg, out_deg, col_start, B, N, K), STRICT=strict, **num, **cfg)
    if need_dw and not empty:
        dw = torch.empty(N, K, dtype=dt, device=dev)
        cfg = launch_config("dw", B, N, K, dt, blocks)
        grid = (triton.cdiv(N, cfg["BLOCK_N"]), triton.cdiv(K, cfg["BLOCK_K"]))
        _launch(_ml_dw_kernel, "dw", grid, 1, tile_counts, dev, (g, x, dw, in_deg, out_deg, reach, B, N, K),
                STRICT=strict, **num, **cfg)
    return dx, dw, db


def _torch_act(t, act):
    return [lambda v: v, torch.relu, torch.nn.functional.elu, torch.tanh][act](t)
