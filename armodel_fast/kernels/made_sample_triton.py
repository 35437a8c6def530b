"""Triton MADE / FVSBN sampler: all D steps in one launch, every hidden unit computed once.

docs/DESIGN.md section 4. A hidden unit of degree m depends only on the inputs of
degree <= m, i.e. on the dimensions drawn at steps 0..m-1. With every layer's
units sorted by degree (stable, as ``ops.masked_linear`` sorts them) the units
of degree t are one contiguous run, and the mask of that run is a prefix of
the previous layer's sorted units (of the inputs, for the first layer). So at
step t each layer computes only its run of degree t from that prefix, and the
P output rows of dimension ``order[t]`` read the last layer's units of degree
<= t (strict mask): no mask is evaluated at all, and drawing all D dimensions
costs about one forward pass instead of D.

One program owns BLOCK_S samples and walks the D steps; the drawn inputs and
the hidden activations live in a per-sample scratch row in global memory
(``[inputs | layer 0 | layer 1 | ...]``, L2-resident), ``tl.debug_barrier()``
between a layer's stores and the next layer's loads. Every product is a
``tl.dot`` of [BLOCK_S, BLOCK_J] activations by a [BLOCK_J, BLOCK_U] weight
tile, in fp32 ("ieee", no TF32: the draws compare against u) or fp64.

The heads' rules are those of ``reference/heads.py`` (and ``ml::*_draw`` in
csrc/masked_linear/masked_linear_math.h), so given the same uniforms the samples equal the
D-pass reference sampler's. ``z = Phi^-1(clamp(u[..., 1]))`` of the mixture
head comes from the caller (the op layer computes it with torch, as the
reference does).
"""
from __future__ import annotations

import math
from itertools import accumulate

import torch
import triton
import triton.language as tl

from ..reference.made import ACT_IN, ACT_OUT, SKIP
from .masked_linear_math import ACT_CODES, activate
from .triton_common import interpreting, next_pow2, softplus

HEADS = {"bernoulli": 0, "categorical": 1, "gaussian": 2, "affine": 3, "affine_raw": 4}
LOG_SCALE_BOUND = tl.constexpr(math.log(1e3))  # reference/made.py LOG_SCALE_BOUND
LOG_SQRT_2PI = tl.constexpr(0.5 * math.log(2 * math.pi))


@triton.jit
def _prefix_dot(acc, a_rows, smask, cnt, w_ptr, ldw, ks, kmask, BLOCK_J: tl.constexpr):
    """``acc[s, k] += sum_{j < cnt} a_rows[s][j] * W[ks[k], j]`` (W row-major, row stride ldw)."""
    for j0 in range(0, cnt, BLOCK_J):
        js = j0 + tl.arange(0, BLOCK_J)
        jmask = js < cnt
        a = tl.load(a_rows[:, None] + js[None, :], mask=smask[:, None] & jmask[None, :], other=0.0)
        w = tl.load(w_ptr + ks.to(tl.int64)[None, :] * ldw + js[:, None], mask=kmask[None, :] & jmask[:, None],
                    other=0.0)
        acc = tl.dot(a, w.to(a.dtype), acc, input_precision="ieee", out_dtype=acc.dtype)
    return acc


@triton.jit
def _output_rows(rows, smask, a_rows, in_off, cnt, w_ptr, ldw, b_ptr, r0, nr, wd_ptr, x_cnt, DKIN, ctxo_ptr, DP,
                 HAS_DIRECT: tl.constexpr, HAS_CTX: tl.constexpr, ACC: tl.constexpr, BLOCK_S: tl.constexpr,
                 BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr):
    """Raw outputs ``r0 .. r0+nr`` (sorted rows) as [BLOCK_S, BLOCK_K]; padded columns hold 0.

    ``((W h + b) + direct x) + context``, the reference's association."""
    cols = tl.arange(0, BLOCK_K)
    ks = r0 + cols
    kmask = cols < nr
    acc = _prefix_dot(tl.zeros([BLOCK_S, BLOCK_K], dtype=ACC), a_rows + in_off, smask, cnt, w_ptr, ldw, ks,
                      kmask, BLOCK_J)
    acc += tl.load(b_ptr + ks, mask=kmask, other=0.0).to(ACC)[None, :]
    if HAS_DIRECT:
        acc += _prefix_dot(tl.zeros([BLOCK_S, BLOCK_K], dtype=ACC), a_rows, smask, x_cnt, wd_ptr, DKIN, ks, kmask,
                           BLOCK_J)
    if HAS_CTX:
        acc += tl.load(ctxo_ptr + rows[:, None] * DP + ks[None, :], mask=smask[:, None] & kmask[None, :],
                       other=0.0).to(ACC)
    return acc


@triton.jit
def _pick(vals, cols, k):
    """``vals[s, k[s]]`` for each row s."""
    return tl.sum(tl.where(cols[None, :] == k[:, None], vals, 0.0), axis=1)


@triton.jit
def _draw_class(logits, cols, kmask, u, K):
    """(class by the inverse-CDF rule ``#{k < K-1 : cdf_k <= u}``, logsumexp) of logits [BLOCK_S, BLOCK_K]."""
    lg = tl.where(kmask[None, :], logits, float("-inf"))
    m = tl.max(lg, axis=1)
    e = tl.exp(lg - m[:, None])
    total = tl.sum(e, axis=1)
    cdf = tl.cumsum(e / total[:, None], axis=1)
    below = (cdf <= u[:, None]) & (cols[None, :] < K - 1)
    return tl.sum(below.to(tl.int32), axis=1), m + tl.log(total)


META = tl.constexpr(8)  # ints per layer in ``meta``: w_off, ldw, out_off, b_off, in_off, skip_off, copy_off, act_out


@triton.jit
def _hidden_step(t, a_rows, rows, smask, w_ptr, b_ptr, meta_ptr, ends_ptr, ctxh_ptr, D, L, KIN, U0,
                 ACT: tl.constexpr, HAS_CTX: tl.constexpr, ACC: tl.constexpr, BLOCK_S: tl.constexpr,
                 BLOCK_U: tl.constexpr, BLOCK_J: tl.constexpr):
    """Every layer's run of degree t; returns (scratch offset, count) of the last layer's units of degree <= t.

    Layer l reads scratch at its ``in_off`` (the inputs, the layer before, or that layer's
    activated copy), adds the units at ``skip_off`` (a residual block's input) when >= 0,
    applies the activation when ``act_out``, and stores act(result) at ``copy_off`` when >= 0."""
    out_off = tl.load(meta_ptr) * 0                  # int64, as the offsets loaded below
    cnt = t * KIN                                    # inputs of degree <= t: the steps before t
    for l in range(L):
        w_off = tl.load(meta_ptr + META * l)
        ldw = tl.load(meta_ptr + META * l + 1)
        out_off = tl.load(meta_ptr + META * l + 2)
        b_off = tl.load(meta_ptr + META * l + 3)
        in_off = tl.load(meta_ptr + META * l + 4)
        skip_off = tl.load(meta_ptr + META * l + 5)
        copy_off = tl.load(meta_ptr + META * l + 6)
        act_out = tl.load(meta_ptr + META * l + 7)
        u_begin = tl.load(ends_ptr + l * (D + 1) + t)    # the units of degree t
        u_end = tl.load(ends_ptr + l * (D + 1) + t + 1)
        for k0 in range(u_begin, u_end, BLOCK_U):
            ks = k0 + tl.arange(0, BLOCK_U)
            umask = ks < u_end
            acc = _prefix_dot(tl.zeros([BLOCK_S, BLOCK_U], dtype=ACC), a_rows + in_off, smask, cnt,
                              w_ptr + w_off, ldw, ks, umask, BLOCK_J)
            acc += tl.load(b_ptr + b_off + ks, mask=umask, other=0.0).to(ACC)[None, :]
            if HAS_CTX:                              # context joins the first layer before its activation
                acc += tl.load(ctxh_ptr + rows[:, None] * U0 + ks[None, :],
                               mask=smask[:, None] & umask[None, :] & (l == 0), other=0.0).to(ACC)
            acc += tl.load(a_rows[:, None] + tl.maximum(skip_off, 0) + ks[None, :],
                           mask=smask[:, None] & umask[None, :] & (skip_off >= 0), other=0.0).to(ACC)
            acc = tl.where(act_out != 0, activate(acc, ACT), acc)
            tl.store(a_rows[:, None] + out_off + ks[None, :], acc, mask=smask[:, None] & umask[None, :])
            tl.store(a_rows[:, None] + tl.maximum(copy_off, 0) + ks[None, :], activate(acc, ACT),
                     mask=smask[:, None] & umask[None, :] & (copy_off >= 0))
        tl.debug_barrier()                           # the run is read by the next layer's threads
        cnt = u_end
    return out_off, cnt


@triton.jit
def _head_step(t, d, a_rows, rows, smask, in_off, cnt, w_ptr, ld_out, b_ptr, noise_ptr, z_ptr, wd_ptr, ctxo_ptr,
               x_ptr, D, K, KIN, P, HEAD: tl.constexpr, HAS_DIRECT: tl.constexpr, HAS_CTX: tl.constexpr,
               ACC: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr):
    """Draw dimension d = order[t] from the output rows of step t; store it; return its log-likelihood term."""
    cols = tl.arange(0, BLOCK_K)
    kmask = cols < K
    nd = rows * D + d
    first = tl.zeros([BLOCK_S], dtype=tl.int32)
    nr = 1 if HEAD == 0 else K                       # rows per head parameter (HEAD 2: logits, mu, log_sigma;
                                                     # HEAD 3/4: mu, raw log sigma)
    p0 = _output_rows(rows, smask, a_rows, in_off, cnt, w_ptr, ld_out, b_ptr, t * P, nr, wd_ptr, t * KIN,
                      D * KIN, ctxo_ptr, D * P, HAS_DIRECT, HAS_CTX, ACC, BLOCK_S, BLOCK_K, BLOCK_J)
    if HEAD == 0:
        u = tl.load(noise_ptr + nd, mask=smask, other=1.0).to(ACC)
        logit = _pick(p0, cols, first)
        xv = tl.where(u < 1.0 / (1.0 + tl.exp(-logit)), 1.0, 0.0).to(ACC)
        term = xv * logit - softplus(logit)
    elif HEAD == 1:
        u = tl.load(noise_ptr + nd, mask=smask, other=0.0).to(ACC)
        xi, lse = _draw_class(p0, cols, kmask, u, K)
        term = _pick(p0, cols, xi) - lse
        tl.store(x_ptr + nd, xi.to(tl.int64), mask=smask)
        tl.store(a_rows + t * K + xi, tl.full([BLOCK_S], 1.0, ACC), mask=smask)
    elif HEAD == 2:                                  # mixture: u0 picks the component, z = Phi^-1(u1)
        mu = _output_rows(rows, smask, a_rows, in_off, cnt, w_ptr, ld_out, b_ptr, t * P + K, K, wd_ptr, t * KIN,
                          D * KIN, ctxo_ptr, D * P, HAS_DIRECT, HAS_CTX, ACC, BLOCK_S, BLOCK_K, BLOCK_J)
        ls = _output_rows(rows, smask, a_rows, in_off, cnt, w_ptr, ld_out, b_ptr, t * P + 2 * K, K, wd_ptr,
                          t * KIN, D * KIN, ctxo_ptr, D * P, HAS_DIRECT, HAS_CTX, ACC, BLOCK_S, BLOCK_K, BLOCK_J)
        u0 = tl.load(noise_ptr + 2 * nd, mask=smask, other=0.0).to(ACC)
        k, lse_w = _draw_class(p0, cols, kmask, u0, K)
        z = tl.load(z_ptr + nd, mask=smask, other=0.0).to(ACC)
        xv = _pick(mu, cols, k) + tl.exp(_pick(ls, cols, k)) * z
        zz = (xv[:, None] - mu) * tl.exp(-ls)
        comp = tl.where(kmask[None, :], p0 - lse_w[:, None] - 0.5 * zz * zz - ls - LOG_SQRT_2PI, float("-inf"))
        m = tl.max(comp, axis=1)
        term = m + tl.log(tl.sum(tl.exp(comp - m[:, None]), axis=1))
    else:                                            # affine inverse x = mu + exp(s) z; p0: mu, next row: raw s
        ls = _output_rows(rows, smask, a_rows, in_off, cnt, w_ptr, ld_out, b_ptr, t * P + 1, 1, wd_ptr, t * KIN,
                          D * KIN, ctxo_ptr, D * P, HAS_DIRECT, HAS_CTX, ACC, BLOCK_S, BLOCK_K, BLOCK_J)
        z = tl.load(noise_ptr + nd, mask=smask, other=0.0).to(ACC)
        term = _pick(ls, cols, first)
        if HEAD == 3:                                # s = bounded log sigma (reference bounded_log_sigma)
            term = term / (1.0 + tl.abs(term) / LOG_SCALE_BOUND)
        xv = _pick(p0, cols, first) + tl.exp(term) * z
    if HEAD != 1:
        tl.store(x_ptr + nd, xv.to(x_ptr.dtype.element_ty), mask=smask)
        tl.store(a_rows + t, xv, mask=smask)
    return term


@triton.jit
def _made_sample_kernel(noise_ptr, z_ptr, order_ptr, w_ptr, b_ptr, meta_ptr, ends_ptr, wd_ptr, ctxh_ptr, ctxo_ptr,
                        act_ptr, x_ptr, lp_ptr, n, D, L, K, U0, A_LD,
                        HEAD: tl.constexpr, ACT: tl.constexpr, HAS_DIRECT: tl.constexpr, HAS_CTX: tl.constexpr,
                        ACC: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_J: tl.constexpr,
                        BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    a_rows = act_ptr + (pid.to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)) * A_LD  # this program's scratch
    if HEAD == 1:
        KIN = K                                      # categorical inputs are one-hot
        P = K
    elif HEAD == 0:
        KIN = 1
        P = 1
    elif HEAD == 2:
        KIN = 1
        P = 3 * K                                    # (logits, mu, log_sigma) per dimension
    else:
        KIN = 1
        P = 2                                        # affine: (mu, raw log sigma) per dimension
    w_out = tl.load(meta_ptr + META * L)
    ld_out = tl.load(meta_ptr + META * L + 1)
    b_out = tl.load(meta_ptr + META * L + 3)
    for chunk in range(pid, tl.cdiv(n, BLOCK_S), tl.num_programs(0)):  # the scratch serves chunk after chunk
        rows = tl.arange(0, BLOCK_S).to(tl.int64) + chunk * BLOCK_S
        smask = rows < n
        for j0 in range(0, D * KIN, BLOCK_J):      # the (one-hot) inputs start at 0
            js = j0 + tl.arange(0, BLOCK_J)
            tl.store(a_rows[:, None] + js[None, :], tl.zeros([BLOCK_S, BLOCK_J], dtype=ACC),
                     mask=js[None, :] < D * KIN)
        tl.debug_barrier()
        lp = tl.zeros([BLOCK_S], dtype=ACC)
        for t in range(D):
            in_off, cnt = _hidden_step(t, a_rows, rows, smask, w_ptr, b_ptr, meta_ptr, ends_ptr, ctxh_ptr, D, L,
                                       KIN, U0, ACT, HAS_CTX, ACC, BLOCK_S, BLOCK_U, BLOCK_J)
            lp += _head_step(t, tl.load(order_ptr + t), a_rows, rows, smask, in_off, cnt, w_ptr + w_out, ld_out,
                             b_ptr + b_out, noise_ptr, z_ptr, wd_ptr, ctxo_ptr, x_ptr, D, K, KIN, P, HEAD,
                             HAS_DIRECT, HAS_CTX, ACC, BLOCK_S, BLOCK_K, BLOCK_J)
            tl.debug_barrier()                       # x_t is read by the next step's threads
        tl.store(lp_ptr + rows, lp, mask=smask)


# ---------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------


MAX_PROGRAMS = 1024  # programs walk the sample chunks grid-stride: scratch is bounded by this many


def launch_config(n: int, K: int, dtype: torch.dtype, block_s=None) -> dict:
    """Block sizes: BLOCK_S samples per program (>= 16 for ``tl.dot``), BLOCK_U units of a
    degree run, BLOCK_J of the prefix per dot, BLOCK_K >= the head's K (padded to 16)."""
    if block_s is None:
        if interpreting():  # cost per op, not per element: as many samples per program as possible
            block_s = max(16, min(256, next_pow2(n)))
        else:  # fill the SMs first; more samples per program only when there are many
            block_s = 16 if n <= 16 * 132 else 32 if n <= 32 * 132 else 64
    if block_s < 16 or block_s & (block_s - 1):
        raise ValueError(f"block_s must be a power of 2 >= 16, got {block_s}")
    wide = dtype == torch.float64
    return dict(BLOCK_S=block_s, BLOCK_U=16, BLOCK_J=128 if interpreting() else (32 if wide else 64),
                BLOCK_K=max(16, next_pow2(K)), num_warps=4 if block_s <= 32 else 8)


def _check(weights, biases, degrees, direct, order, ctx_hidden, ctx_out, noise, head, K, activation, z, program):
    """Shapes, devices and contiguity of the operands (each error names the argument)."""
    if program is not None:
        L = len(weights) - 1
        if len(program) != L:
            raise ValueError(f"program must have one entry per hidden layer ({L}), got {len(program)}")
        for l, f in enumerate(program):
            if not 0 <= int(f) <= (ACT_OUT | ACT_IN | SKIP) or (f & ACT_IN and l < 1) or (
                    f & SKIP and (l < 2 or weights[l].shape[0] != weights[l - 2].shape[0])):
                raise ValueError(f"program[{l}]={f!r} cannot run: ACT_IN needs a layer before, SKIP layer l-2 "
                                 "with as many units")
    if head not in HEADS:
        raise ValueError(f"head must be one of {tuple(HEADS)}, got {head!r}")
    if activation not in ACT_CODES.values():
        raise ValueError(f"activation must be a code 0..3, got {activation!r}")
    if head in ("affine", "affine_raw") and K != 1:
        raise ValueError(f"K must be 1 for head={head!r} (a single Gaussian per dimension), got {K!r}")
    if (ctx_hidden is None) != (ctx_out is None) and len(weights) > 1:
        raise ValueError("ctx_hidden and ctx_out go together (both context terms, or neither)")
    if not weights or len(biases) != len(weights) or len(degrees) != len(weights) - 1:
        raise ValueError("weights (hidden + output), biases (one per layer) and degrees (one per hidden layer) "
                         "must line up")
    dev = weights[0].device
    if dev.type == "cpu" and not interpreting():
        raise ValueError("Triton kernels need CUDA tensors; CPU tensors run only under TRITON_INTERPRET=1")
    n, D = noise.shape[0], noise.shape[1]
    kin = K if head == "categorical" else 1
    P = {"bernoulli": 1, "categorical": K, "gaussian": 3 * K, "affine": 2, "affine_raw": 2}[head]
    rows_in = D * kin
    for l, (w, b) in enumerate(zip(weights, biases)):
        rows = w.shape[0]
        if w.dim() != 2 or w.shape[1] != rows_in or (l == len(weights) - 1 and rows != D * P):
            raise ValueError(f"weights[{l}] has shape {list(w.shape)}; the layers do not chain from "
                             f"{rows_in} inputs to {D * P} outputs")
        if b.shape != (rows,):
            raise ValueError(f"biases[{l}] must have shape [{rows}], got {list(b.shape)}")
        if l < len(degrees) and degrees[l].shape != (rows,):
            raise ValueError(f"degrees[{l}] must have shape [{rows}], got {list(degrees[l].shape)}")
        rows_in = rows
    named = [("noise", noise), ("order", order), ("z", z), ("direct", direct), ("ctx_hidden", ctx_hidden),
             ("ctx_out", ctx_out)] + [(f"weights[{l}]", w) for l, w in enumerate(weights)]
    for name, t in named + [(f"biases[{l}]", b) for l, b in enumerate(biases)]:
        if t is not None and (t.device != dev or not t.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous tensor on {dev}, got {t.device}")
    if direct is not None and tuple(direct.shape) != (D * P, D * kin):
        raise ValueError(f"direct must have shape [{D * P}, {D * kin}], got {list(direct.shape)}")
    if ctx_out is not None and tuple(ctx_out.shape) != (n, D * P):
        raise ValueError(f"ctx_out must have shape [{n}, {D * P}], got {list(ctx_out.shape)}")
    if ctx_hidden is not None and (len(weights) < 2 or tuple(ctx_hidden.shape) != (n, weights[0].shape[0])):
        raise ValueError(f"ctx_hidden must have shape [n, units of the first hidden layer], got "
                         f"{list(ctx_hidden.shape)}")
    if head == "gaussian" and (z is None or tuple(z.shape) != (n, D)):
        raise ValueError("z (Phi^-1 of the clamped u[..., 1]) [n, D] is required for the mixture head")


def made_sample(weights, biases, degrees, direct, order, ctx_hidden, ctx_out, noise, head, K, activation,
                z=None, *, program=None, block_s=None, max_programs=None):
    """One launch for ``n = noise.shape[0]`` samples: (x [n, D], log p(x) [n]).

    The operands of the C++ ``made_sample`` (csrc/made/made_cpu.cpp), on one CUDA device
    (or the CPU under TRITON_INTERPRET=1): ``weights`` L hidden + 1 output
    degree-sorted weights (unmasked is fine: only the reachable prefix is read),
    ``biases`` sorted, ``degrees`` the L hidden layers' sorted degrees, ``direct``
    the sorted direct weight or None, ``order`` [D], ``ctx_hidden [n, U0]`` /
    ``ctx_out [n, D*P]`` the sorted context terms or None; ``noise`` u [n, D] /
    [n, D, 2] or z [n, D] (``head="affine"``, ``"affine_raw"``), ``z`` = Phi^-1(clamped u[..., 1])
    for the mixture head. ``head`` a name of :data:`HEADS`, ``activation`` a code
    0..3 (none, relu, elu, tanh); ``program`` the hidden layers' flags (``reference.made``
    ACT_OUT / ACT_IN / SKIP; None: ACT_OUT each). Computes in fp64 for fp64 weights, else fp32;
    x has the weights' dtype (int64 for a categorical head), log p is fp32/fp64.
    """
    _check(weights, biases, degrees, direct, order, ctx_hidden, ctx_out, noise, head, K, activation, z, program)
    hd = HEADS[head]
    L = len(weights) - 1
    n, D = noise.shape[0], noise.shape[1]
    dev = weights[0].device
    acc_dtype = torch.float64 if weights[0].dtype == torch.float64 else torch.float32
    kin = K if hd == 1 else 1
    units = [w.shape[0] for w in weights[:-1]]
    flags = [ACT_OUT] * L if program is None else [int(f) for f in program]
    copied = [l + 1 < L and bool(flags[l + 1] & ACT_IN) for l in range(L)]
    # Scratch row of a sample: [D*KIN drawn inputs | layer 0 | ... | layer L-1 | act(layer l) where
    # layer l+1 reads it (ACT_IN)].
    act_off = list(accumulate(units + [u for u, c in zip(units, copied) if c], initial=D * kin))
    a_ld = act_off[-1]
    copy_off = iter(act_off[L:])
    copy_at = [next(copy_off) if c else -1 for c in copied]
    read_at = [0] + [copy_at[l] if copied[l] else act_off[l] for l in range(L)]
    w_all = torch.cat([w.reshape(-1) for w in weights])
    b_all = torch.cat([b.reshape(-1) for b in biases])
    w_off = list(accumulate((w.numel() for w in weights[:-1]), initial=0))
    b_off = list(accumulate((b.numel() for b in biases[:-1]), initial=0))
    meta = torch.tensor([[w_off[l], weights[l].shape[1], act_off[l] if l < L else 0, b_off[l], read_at[l],
                          act_off[l - 2] if l < L and flags[l] & SKIP else -1, copy_at[l] if l < L else -1,
                          int(l < L and bool(flags[l] & ACT_OUT))]
                         for l in range(L + 1)], dtype=torch.int64).reshape(-1).to(dev)
    steps = torch.arange(D, device=dev)
    ends = torch.zeros(max(L, 1), D + 1, dtype=torch.int32, device=dev)
    for l, deg in enumerate(degrees):  # ends[l, t+1] = units of degree <= t
        ends[l, 1:] = torch.searchsorted(deg.to(dev), steps, right=True).to(torch.int32)
    x = torch.empty(n, D, device=dev, dtype=torch.int64 if hd == 1 else weights[0].dtype)
    lp = torch.empty(n, device=dev, dtype=acc_dtype)
    if n == 0:
        return x, lp
    cfg = launch_config(n, K if hd != 0 else 1, acc_dtype, block_s)
    programs = min(triton.cdiv(n, cfg["BLOCK_S"]), MAX_PROGRAMS if max_programs is None else max_programs)
    act = torch.empty(programs * cfg["BLOCK_S"], a_ld, device=dev, dtype=acc_dtype)
    dummy = noise
    _made_sample_kernel[(programs,)](
        noise, dummy if z is None else z, order, w_all, b_all, meta, ends,
        dummy if direct is None else direct, dummy if ctx_hidden is None else ctx_hidden,
        dummy if ctx_out is None else ctx_out, act, x, lp, n, D, L, K, units[0] if units else 0, a_ld,
        HEAD=hd, ACT=activation, HAS_DIRECT=direct is not None, HAS_CTX=ctx_out is not None,
        ACC=tl.float64 if acc_dtype == torch.float64 else tl.float32, **cfg)
    return x, lp
