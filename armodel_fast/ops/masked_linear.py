"""masked_linear: ``act(x @ (W * M).T + bias)`` with the mask computed from degrees.

Chain (STYLE.md): C++ kernels ``masked_linear_{prepare,forward,backward}`` ->
torch custom ops ``armodel_fast::masked_linear`` / ``masked_linear_backward``
(fake impls + autograd, so ``torch.compile`` traces them without graph breaks)
-> :func:`masked_linear` (validation, ``backend=``) -> ``nn.MaskedLinear``.

``M[k, j] = 1{out_degrees[k] >= in_degrees[j]}`` (``>`` when ``strict``); no
``[out, in]`` mask is ever read. The CPU kernel sorts inputs and outputs by
degree (a permutation invisible to the caller), which turns the mask into a
staircase, and runs one BLAS matmul per block of rows over only the inputs
the block reaches (DESIGN.md section 4). The Triton backend
(``kernels/masked_linear_triton.py``) gets the same stable degree sort from
:func:`prepare_triton` (sorted weights, sorted degrees and their staircase) and
computes the mask inside each tile, skipping all-zero tiles; so does the CUDA
backend (``csrc/masked_linear_cuda.cu``, operands from :func:`prepare_sorted`). The prepared
weights are cached per weight tensor and backend, keyed on the tensor itself
(weak reference), its version counter, data pointer and layout and on the
degree values. A forward that records a graph (training) always prepares anew
and its backward reuses that; calls without a graph (evaluation, sampling)
reuse what an earlier such call built while the weights are unchanged. Any
in-place update that PyTorch tracks (``load_state_dict``, ``copy_`` under
``no_grad``) or a degree change (MADE's ``next_mask``) invalidates the entry,
and so does a training step, even with a fused optimizer, whose updates the
version counter does not see. Writes through ``weight.data`` bypass the version
counter too: every cache hit therefore also compares 64 connected weight
entries (at fixed random positions) with their values when the entry was
built, which catches bulk writes (``.data.mul_``, ``.data.normal_()``,
``.data.copy_``, EMA updates); a ``.data`` write that changes only a few
entries can still go unseen: call :func:`clear_cache` after those, or run
inside ``with caching(False):``.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import threading
import weakref
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _ext
from .._backend import check_backend_name, register_kernel, resolve_backend
from ..reference.masked_linear import degree_mask
from . import _nade_common

ACTIVATIONS = {"none": 0, "relu": 1, "elu": 2, "tanh": 3}
_REF_ACT = {"none": lambda t: t, "relu": F.relu, "elu": F.elu, "tanh": torch.tanh}
MAX_BLOCKS = 8  # row blocks of the staircase (more: less masked area, smaller matmuls)


def _cpp():
    ext = _ext.get_ext()
    if ext is None or not hasattr(ext, "masked_linear_forward"):
        raise RuntimeError(f"masked_linear backend 'cpp' is unavailable: {_ext.ext_error() or 'the extension has no masked_linear kernels; rebuild it'}")
    return ext


# ---- cache of prepared (degree-sorted, masked) weights -------------------------

class Prepared(NamedTuple):
    """Degree-sorted masked weights: sorted row i is unit ``perm_out[i]``, sorted
    column j is input ``perm_in[j]``; row i reaches the sorted inputs
    ``[0, row_reach[i])``; ``blocks[b] = (row_begin, row_end, cols)``."""
    w_sorted: Tensor
    perm_in: Tensor
    perm_out: Tensor
    row_reach: Tensor
    blocks: Tensor


class TritonPrepared(NamedTuple):
    """Degree-sorted operands of the Triton kernels: ``w_sorted = weight[perm_out][:, perm_in]``
    (unmasked: the kernels mask in the tile), the sorted degrees (int32), their staircase
    (``reach``, ``col_start``: see ``kernels.masked_linear_triton.staircase``) and the
    inverse permutations that put results back in the caller's order."""
    w_sorted: Tensor
    perm_in: Tensor
    perm_out: Tensor
    inv_in: Tensor
    inv_out: Tensor
    in_sorted: Tensor
    out_sorted: Tensor
    reach: Tensor
    col_start: Tensor


class _Entry:
    """One cached build: ``key`` and spot values recorded BEFORE the build read the weight."""
    __slots__ = ("ref", "key", "in_degrees", "out_degrees", "spot_rows", "spot_cols", "spot_live", "spot_values",
                 "prepared", "training")


_SPOTS = 64  # weight entries compared at every cache hit (see the module docstring)


_CACHE: dict = {}  # (id(weight), kind) -> _Entry; kind "cpp", "triton" or "sorted" (cuda)
_stats = {"hits": 0, "builds": 0, "stale": 0, "discarded": 0}
# Guards _CACHE and _stats, never a build (builds of different threads run in parallel).
# Re-entrant: the weak-reference callback _forget can run from the garbage collector
# inside a section that already holds it.
_LOCK = threading.RLock()
_enabled = [True]


@contextlib.contextmanager
def caching(enabled: bool):
    """Turn the prepared-weight cache on/off inside a ``with`` block (off: rebuild every call)."""
    old, _enabled[0] = _enabled[0], bool(enabled)
    try:
        yield
    finally:
        _enabled[0] = old


def clear_cache() -> None:
    """Drop every cached prepared weight (needed only after writes through ``.data``)."""
    with _LOCK:
        _CACHE.clear()


def cache_info() -> dict:
    """``{"entries", "hits", "builds", "stale", "discarded"}`` of the prepared-weight cache
    (``stale``: entries rebuilt because spot-checked weight values had changed behind the
    version counter; ``discarded``: builds not stored because the weight's version changed
    while they ran, i.e. another thread updated it)."""
    with _LOCK:
        return {"entries": len(_CACHE), **_stats}


@functools.lru_cache(maxsize=256)
def _spot_grid(n: int, k: int):
    """The candidate positions of an [n, k] weight (CPU), drawn once per shape."""
    g = torch.Generator().manual_seed(n * 1_000_003 + k)
    m = 4 * _SPOTS if n * k else 0
    return torch.randint(0, max(n, 1), (m,), generator=g), torch.randint(0, max(k, 1), (m,), generator=g)


def _spot_positions(weight: Tensor, in_degrees: Tensor, out_degrees: Tensor, strict: bool):
    """``(rows, cols, live)``: 4 x ``_SPOTS`` weight positions drawn by a fixed generator (no
    lattice that could line up with the mask, such as a strict mask's zero diagonal) and
    whether each is connected (only those count: the masked-out ones never matter, nor
    move in training). All on the weight's device, computed without a device sync."""
    rows, cols = _spot_grid(*weight.shape)
    dout, din = out_degrees[rows.to(out_degrees.device)], in_degrees[cols.to(in_degrees.device)]
    live = (dout > din) if strict else (dout >= din)
    dev = weight.device
    return rows.to(dev), cols.to(dev), live.to(dev)


def _still_valid(entry: _Entry, weight: Tensor, in_degrees: Tensor, out_degrees: Tensor) -> tuple:
    """``(valid, spots_moved)``: same degrees and same spot-checked weight values (one device
    sync for both; a NaN spot that is still NaN has not moved)."""
    if entry.in_degrees.shape != in_degrees.shape or entry.out_degrees.shape != out_degrees.shape:
        return False, False
    same_degrees = ((entry.in_degrees == in_degrees).all() & (entry.out_degrees == out_degrees).all())
    now, then = weight.detach()[entry.spot_rows, entry.spot_cols], entry.spot_values
    moved = (now != then) & ~(now.isnan() & then.isnan()) & entry.spot_live
    same_degrees, same_spots = torch.stack([same_degrees.to(weight.device), ~moved.any()]).tolist()
    return same_degrees and same_spots, not same_spots


def _key(weight: Tensor, strict: bool, max_blocks: int):
    return (weight._version, weight.data_ptr(), tuple(weight.shape), weight.stride(), weight.dtype,
            strict, max_blocks)


def _snapshot(weight: Tensor, in_degrees: Tensor, out_degrees: Tensor, strict: bool, max_blocks: int) -> _Entry:
    """An entry recording, BEFORE a build reads the weight, its version (read first), copies
    of the degrees (the build uses these) and the spot values. An update landing during the
    build then leaves the entry invalid: a tracked in-place write (``add_``, ``copy_``,
    ``optimizer.step()``) bumps the version only after it has written, and an untracked one
    (``.data``, fused optimizers) changes the recorded spot values."""
    entry = _Entry()
    entry.key = _key(weight, strict, max_blocks)
    entry.in_degrees, entry.out_degrees = in_degrees.clone(), out_degrees.clone()
    entry.spot_rows, entry.spot_cols, entry.spot_live = _spot_positions(weight, entry.in_degrees,
                                                                        entry.out_degrees, strict)
    entry.spot_values = weight.detach()[entry.spot_rows, entry.spot_cols].clone()
    return entry


def _store(ck, entry: _Entry, weight: Tensor) -> None:
    """Publish ``entry`` unless the table holds one of a newer version of the same weight
    (a slower thread's build must not replace a faster one's newer result)."""
    with _LOCK:
        old = _CACHE.get(ck)
        if (old is not None and old.ref() is weight and old.key[1:] == entry.key[1:]
                and old.key[0] > entry.key[0]):
            return
        entry.ref = weakref.ref(weight, lambda r, ck=ck: _forget(ck, r))
        _CACHE[ck] = entry


def _forget(ck, ref) -> None:
    """Weak-reference callback: the weight died, drop its entry (unless already replaced)."""
    with _LOCK:
        entry = _CACHE.get(ck)
        if entry is not None and entry.ref is ref:
            del _CACHE[ck]


_USES = ("eval", "train", "backward")


def _cached(kind: str, weight: Tensor, in_degrees: Tensor, out_degrees: Tensor, strict: bool, max_blocks: int,
            build, use: str = "eval"):
    """``build(in_degrees, out_degrees)``, or its cached result for this weight, its version
    and these degrees.

    ``use``: ``"train"``, a forward that records a graph: always builds (and stores the
    result for its backward); ``"backward"``: takes any valid entry; ``"eval"`` (no graph:
    evaluation, sampling): takes only entries that no training forward or backward has
    built or used, so the first evaluation after training steps rebuilds even when a fused
    optimizer (``Adam(fused=True)``) left the version counter unchanged.

    Thread safety: the version and spot values are recorded before the build (see
    :func:`_snapshot`) and a build during which the version changed is not stored, so an
    update from another thread can make that one call see either version (or, as for any
    op reading a tensor being written, a mix) but never leaves a stale entry behind.
    """
    if use not in _USES:
        raise ValueError(f"use must be one of {_USES}, got {use!r}")
    cacheable = _enabled[0] and not weight.is_inference()
    ck = (id(weight), kind)
    if cacheable and use != "train":
        entry = _CACHE.get(ck)
        if (entry is not None and entry.ref() is weight and (use == "backward" or not entry.training)
                and entry.key == _key(weight, strict, max_blocks)):
            valid, moved = _still_valid(entry, weight, in_degrees, out_degrees)
            with _LOCK:
                _stats["stale"] += moved
                _stats["hits"] += valid
            if valid:
                entry.training |= use == "backward"  # an optimizer step may follow (fused: unseen)
                return entry.prepared
    if not cacheable:
        prepared = build(in_degrees, out_degrees)
        with _LOCK:
            _stats["builds"] += 1
        return prepared
    entry = _snapshot(weight, in_degrees, out_degrees, strict, max_blocks)
    entry.prepared = build(entry.in_degrees, entry.out_degrees)
    entry.training = use != "eval"
    unchanged = entry.key == _key(weight, strict, max_blocks)
    with _LOCK:
        _stats["builds"] += 1
        _stats["discarded"] += not unchanged
    if unchanged:
        _store(ck, entry, weight)
    return entry.prepared


def prepare(weight: Tensor, in_degrees: Tensor, out_degrees: Tensor, strict: bool,
            max_blocks: int = None, use: str = "eval") -> Prepared:
    """The prepared weights of ``(weight, degrees)`` for the C++ kernels, from the cache when
    still valid (``use``: see :func:`_cached`)."""
    max_blocks = MAX_BLOCKS if max_blocks is None else max_blocks
    return _cached("cpp", weight, in_degrees, out_degrees, strict, max_blocks, lambda din, dout: Prepared(
        *_cpp().masked_linear_prepare(weight.detach(), din, dout, strict, max_blocks)), use)


def _triton():
    from ..kernels import masked_linear_triton  # imports triton: only when the backend is used
    return masked_linear_triton


def prepare_triton(weight: Tensor, in_degrees: Tensor, out_degrees: Tensor, strict: bool,
                   use: str = "eval") -> TritonPrepared:
    """The degree-sorted operands of ``(weight, degrees)`` for the Triton kernels (cached like :func:`prepare`).

    The same stable sort as the C++ ``masked_linear_prepare``, so both backends order units alike."""
    def build(din, dout):
        dev = weight.device
        in_sorted, perm_in = torch.sort(din.to(dev), stable=True)
        out_sorted, perm_out = torch.sort(dout.to(dev), stable=True)
        w_sorted = weight.detach().index_select(0, perm_out).index_select(1, perm_in).contiguous()
        return TritonPrepared(w_sorted, perm_in, perm_out, torch.argsort(perm_in), torch.argsort(perm_out),
                              *_triton().staircase(in_sorted, out_sorted, strict))
    return _cached("triton", weight, in_degrees, out_degrees, strict, 0, build, use)


def _triton_forward(x, weight, bias, in_degrees, out_degrees, strict, activation, x_sorted, y_sorted, use):
    p = prepare_triton(weight, in_degrees, out_degrees, strict, use)
    xs = (x if x_sorted else x.index_select(1, p.perm_in)).contiguous()
    bs = None if bias is None else bias.detach().index_select(0, p.perm_out)
    ys = _triton().masked_linear_forward(xs, p.w_sorted, bs, p.in_sorted, p.out_sorted, strict, activation,
                                         reach=p.reach, col_start=p.col_start)
    return ys if y_sorted else ys.index_select(1, p.inv_out)


def _triton_backward(grad_y, x, weight, y, in_degrees, out_degrees, strict, activation, x_sorted, y_sorted,
                     need_dx, need_dw, need_db):
    p = prepare_triton(weight, in_degrees, out_degrees, strict, "backward")
    to_sorted = (lambda t: t.contiguous()) if y_sorted else (lambda t: t.index_select(1, p.perm_out))
    xs = (x if x_sorted else x.index_select(1, p.perm_in)).contiguous()
    dx, dw, db = _triton().masked_linear_backward(
        to_sorted(grad_y), xs, p.w_sorted, None if y is None else to_sorted(y), p.in_sorted, p.out_sorted,
        strict, activation, need_dx=need_dx, need_dw=need_dw, need_db=need_db, reach=p.reach,
        col_start=p.col_start)
    if need_dx and not x_sorted:
        dx = dx.index_select(1, p.inv_in)
    if need_dw:
        dw = dw.index_select(0, p.inv_out).index_select(1, p.inv_in)
    if need_db:
        db = db.index_select(0, p.inv_out)
    return dx, dw, db


# ---- CUDA backend (csrc/masked_linear_cuda.cu) --------------------------------------

class SortedWeights(NamedTuple):
    """Degree-sorted operands of the CUDA kernels (and of their CPU tile-reference):
    ``w_sorted = weight[perm_out][:, perm_in]``, unmasked (the kernels compute the mask
    per tile from ``in_sorted`` / ``out_sorted``), in the compute dtype (fp32 for
    fp16/bf16 weights, else the weight's)."""
    w_sorted: Tensor
    perm_in: Tensor
    perm_out: Tensor
    in_sorted: Tensor
    out_sorted: Tensor


def _cuda():
    ext = _ext.get_cuda_ext()
    if ext is None or not hasattr(ext, "masked_linear_forward"):
        raise RuntimeError("masked_linear backend 'cuda' is unavailable: "
                           f"{_ext.cuda_ext_error() or 'the CUDA extension has no masked_linear kernels; rebuild it'}")
    return ext


def prepare_sorted(weight: Tensor, in_degrees: Tensor, out_degrees: Tensor, use: str = "eval") -> SortedWeights:
    """The degree-sorted operands of ``(weight, degrees)`` on the weight's device (cached like
    :func:`prepare`; independent of ``strict``). The same stable sort as the C++
    ``masked_linear_prepare``, so ``x_sorted``/``y_sorted`` mean the same order in every backend."""
    def build(din, dout):
        dev = weight.device
        in_sorted, perm_in = torch.sort(din.to(dev), stable=True)
        out_sorted, perm_out = torch.sort(dout.to(dev), stable=True)
        w = weight.detach()
        w = w.float() if w.dtype in (torch.float16, torch.bfloat16) else w
        w_sorted = w.index_select(0, perm_out).index_select(1, perm_in).contiguous()
        return SortedWeights(w_sorted, perm_in.contiguous(), perm_out.contiguous(), in_sorted.contiguous(),
                             out_sorted.contiguous())
    return _cached("sorted", weight, in_degrees, out_degrees, False, 0, build, use)


# ---- custom ops -----------------------------------------------------------------

@torch.library.custom_op("armodel_fast::masked_linear", mutates_args=())
def _masked_linear_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], in_degrees: Tensor,
                      out_degrees: Tensor, strict: bool, activation: str, backend: str,
                      x_sorted: bool = False, y_sorted: bool = False, fresh: bool = False) -> Tensor:
    """x [B, in] -> [B, out]. ``x_sorted``/``y_sorted``: x's columns / y's units are in
    degree-sorted (stable) order, as between chained MADE layers (no gather/scatter).
    ``fresh``: prepare the weights anew instead of from the cache (training: see
    :func:`fresh_weights`); the backward finds them in the cache."""
    use = "train" if fresh else "eval"
    if backend == "triton":
        return _triton_forward(x, weight, bias, in_degrees, out_degrees, strict, activation, x_sorted, y_sorted,
                               use)
    if backend == "cuda":
        p = prepare_sorted(weight, in_degrees, out_degrees, use)
        return _cuda().masked_linear_forward(x, p.w_sorted, bias, p.perm_in, p.perm_out, p.in_sorted, p.out_sorted,
                                             strict, ACTIVATIONS[activation], x_sorted, y_sorted)
    if backend != "cpp":
        raise RuntimeError(f"armodel_fast::masked_linear has no {backend!r} kernel")
    p = prepare(weight, in_degrees, out_degrees, strict, use=use)
    return _cpp().masked_linear_forward(x, p.w_sorted, bias, p.perm_in, p.perm_out, p.row_reach, p.blocks,
                                        ACTIVATIONS[activation], x_sorted, y_sorted)


@_masked_linear_op.register_fake
def _(x, weight, bias, in_degrees, out_degrees, strict, activation, backend, x_sorted=False, y_sorted=False,
      fresh=False):
    return x.new_empty(x.shape[0], weight.shape[0])


def fresh_weights(x: Tensor, weight: Tensor) -> bool:
    """Whether a forward prepares its weights anew: when it records a graph (training).
    Optimizer steps normally bump the weight's version counter, which invalidates the
    cache, but fused optimizers (``Adam(fused=True)``) do not; a training step therefore
    never trusts the cache, its backward reuses what its forward built, and the next call
    without a graph rebuilds (see :func:`_cached`)."""
    return torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)


@torch.library.custom_op("armodel_fast::masked_linear_backward", mutates_args=())
def _masked_linear_backward_op(grad_y: Tensor, x: Tensor, weight: Tensor, y: Optional[Tensor],
                               in_degrees: Tensor, out_degrees: Tensor, strict: bool, activation: str,
                               backend: str, x_sorted: bool, y_sorted: bool, need_dx: bool, need_dw: bool,
                               need_db: bool) -> Tuple[Tensor, Tensor, Tensor]:
    if backend == "triton":
        dx, dw, db = _triton_backward(grad_y, x, weight, y, in_degrees, out_degrees, strict, activation,
                                      x_sorted, y_sorted, need_dx, need_dw, need_db)
    elif backend == "cuda":
        p = prepare_sorted(weight, in_degrees, out_degrees, "backward")
        dx, dw, db = _cuda().masked_linear_backward(grad_y, x, y, p.w_sorted, p.perm_in, p.perm_out, p.in_sorted,
                                                    p.out_sorted, strict, ACTIVATIONS[activation], x_sorted,
                                                    y_sorted, need_dx, need_dw, need_db)
    elif backend != "cpp":
        raise RuntimeError(f"armodel_fast::masked_linear_backward has no {backend!r} kernel")
    else:
        p = prepare(weight, in_degrees, out_degrees, strict, use="backward")
        dx, dw, db = _cpp().masked_linear_backward(grad_y, x, y, p.w_sorted, p.perm_in, p.perm_out,
                                                   p.row_reach, p.blocks, ACTIVATIONS[activation], x_sorted,
                                                   y_sorted, need_dx, need_dw, need_db)
    return (dx if need_dx else x.new_empty(0), dw if need_dw else x.new_empty(0), db if need_db else x.new_empty(0))


@_masked_linear_backward_op.register_fake
def _(grad_y, x, weight, y, in_degrees, out_degrees, strict, activation, backend, x_sorted, y_sorted,
      need_dx, need_dw, need_db):
    return (x.new_empty(x.shape if need_dx else (0,)), x.new_empty(weight.shape if need_dw else (0,)),
            x.new_empty((weight.shape[0],) if need_db else (0,)))


def _setup_context(ctx, inputs, output):
    x, weight, bias, in_degrees, out_degrees, strict, activation, backend, x_sorted, y_sorted, _ = inputs
    # Degrees are cloned (a few KB): MADE rewrites its degree buffers in place when it
    # switches masks, and the backward must use the forward's mask.
    ctx.save_for_backward(x, weight, in_degrees.clone(), out_degrees.clone(),
                          output if activation != "none" else None)
    ctx.args = (strict, activation, backend, x_sorted, y_sorted, bias is not None)


def _backward(ctx, grad_y):
    x, weight, in_degrees, out_degrees, y = ctx.saved_tensors
    strict, activation, backend, x_sorted, y_sorted, has_bias = ctx.args
    need_dx, need_dw, need_db = ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2]
    dx, dw, db = _masked_linear_backward_op(grad_y, x, weight, y, in_degrees, out_degrees, strict, activation,
                                            backend, x_sorted, y_sorted, need_dx, need_dw, need_db)
    return (dx if need_dx else None, dw if need_dw else None, db if need_db else None,
            None, None, None, None, None, None, None, None)


_masked_linear_op.register_autograd(_backward, setup_context=_setup_context)
_nade_common.forbid_double_backward(_masked_linear_backward_op, "masked_linear (MADE, FVSBN)")


# ---- public function ---------------------------------------------------------------

def _check_degrees(name: str, d, n: int) -> Tensor:
    if not isinstance(d, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer degrees, got {type(d).__name__}")
    if d.dtype.is_floating_point or d.dtype.is_complex or d.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer degrees, got dtype {d.dtype}")
    if d.dim() != 1 or d.numel() != n:
        raise ValueError(f"{name} must be a 1-D tensor of length {n}, got shape {tuple(d.shape)}")
    return d if d.dtype == torch.long else d.long()


def masked_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], in_degrees: Tensor, out_degrees: Tensor,
                  strict: bool, activation: str = "none", backend: str = "cpp") -> Tensor:
    """``act(x @ (weight * M).T + bias)``, ``M[k, j] = 1{out_degrees[k] >= in_degrees[j]}`` (``>`` if strict).

    x [..., in], weight [out, in], bias [out] or None, degrees int [in] / [out];
    activation one of ``none, relu, elu, tanh`` (elu with alpha = 1), fused.
    ``backend``: ``"cpp"``, ``"triton"`` (CUDA tensors, or CPU under ``TRITON_INTERPRET=1``),
    ``"cuda"`` (CUDA tensors), ``"reference"`` or ``"auto"``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if not weight.dtype.is_floating_point:
        raise TypeError(f"weight must be a floating-point tensor, got dtype {weight.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape [out, in], got {tuple(weight.shape)}")
    n_out, n_in = weight.shape
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dtype != weight.dtype:
        raise TypeError(f"x and weight must have the same dtype, got {x.dtype} and {weight.dtype}")
    if x.dim() < 1 or x.shape[-1] != n_in:
        raise ValueError(f"x must have shape [..., {n_in}], got {tuple(x.shape)}")
    if x.device != weight.device:
        raise ValueError(f"x is on {x.device} but weight is on {weight.device}")
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.dtype != weight.dtype:
            raise TypeError(f"bias must have the weight's dtype {weight.dtype}, got {bias.dtype}")
        if bias.shape != (n_out,):
            raise ValueError(f"bias must have shape [{n_out}], got {tuple(bias.shape)}")
        if bias.device != weight.device:
            raise ValueError(f"bias is on {bias.device} but weight is on {weight.device}")
    in_degrees = _check_degrees("in_degrees", in_degrees, n_in)
    out_degrees = _check_degrees("out_degrees", out_degrees, n_out)
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    backend = resolve_backend(check_backend_name(backend), "masked_linear", x.device)
    if backend == "reference":
        mask = degree_mask(in_degrees.to(weight.device), out_degrees.to(weight.device), strict, weight.dtype)
        return _REF_ACT[activation](F.linear(x, weight * mask, bias))
    lead = x.shape[:-1]
    y = _masked_linear_op(x.reshape(-1, n_in), weight, bias, in_degrees, out_degrees, strict, activation, backend,
                          fresh=fresh_weights(x, weight))
    return y.reshape(*lead, n_out)


if _ext.get_ext() is not None and hasattr(_ext.get_ext(), "masked_linear_forward"):
    register_kernel("masked_linear", "cpp")
if _ext.get_cuda_ext() is not None and hasattr(_ext.get_cuda_ext(), "masked_linear_forward"):
    register_kernel("masked_linear", "cuda")
if importlib.util.find_spec("triton") is not None:  # kernels imported at first use (see _triton)
    register_kernel("masked_linear", "triton")
