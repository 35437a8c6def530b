"""The masked-linear kernels of every backend, registered in :mod:`armodel_fast.dispatch`.

Each backend prepares degree-sorted weights once per weight version (``cache.py``):
the C++ kernels masked staircase blocks (:func:`prepare`), Triton and CUDA the
unmasked sorted weights they mask per tile (:func:`prepare_triton`,
:func:`prepare_sorted`). All use the same stable degree sort, so ``x_sorted`` /
``y_sorted`` mean the same order everywhere. Launchers:

* ``forward(x, weight, bias, in_degrees, out_degrees, strict, activation, x_sorted, y_sorted, use) -> y``
* ``backward(grad_y, x, weight, y, in_degrees, out_degrees, strict, activation, x_sorted, y_sorted,
  need_dx, need_dw, need_db) -> (dx, dw, db)``
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ... import _ext
from ..._validate import transform_active
from ...dispatch import BackendUnavailableError, register
from .cache import _cached, mark_training

ACTIVATIONS = {"none": 0, "relu": 1, "elu": 2, "tanh": 3}
MAX_BLOCKS = 8  # row blocks of the staircase (more: less masked area, smaller matmuls)
TRAIN_BLOCKS = 16  # the same for the training path on the caller's weights (see :func:`plan`)


def _cpp():
    ext = _ext.get_ext()
    if ext is None or not hasattr(ext, "masked_linear_forward"):
        raise BackendUnavailableError(f"masked_linear backend 'cpp' is unavailable: {_ext.ext_error() or 'the extension has no masked_linear kernels; rebuild it'}")
    return ext


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


def prepare(weight: Tensor, in_degrees: Tensor, out_degrees: Tensor, strict: bool,
            max_blocks: int = None, use: str = "eval") -> Prepared:
    """The prepared weights of ``(weight, degrees)`` for the C++ kernels, from the cache when
    still valid (``use``: see :func:`_cached`)."""
    max_blocks = MAX_BLOCKS if max_blocks is None else max_blocks
    return _cached("cpp", weight, in_degrees, out_degrees, strict, max_blocks, lambda din, dout: Prepared(
        *_cpp().masked_linear_prepare(weight.detach(), din, dout, strict, max_blocks)), use)


class Plan(NamedTuple):
    """The weight-free part of the C++ kernels' layout: the stable degree sorts, each sorted
    row's reach, ``blocks [nb, 4] = (row_begin, row_end, c0, c1)`` (every row of a block
    reaches ``[0, c0)``, the last reaches ``[0, c1)``) and whether both sorts are the
    identity (degrees already in order: MADE's hidden layers, a natural-order input layer).
    ``order_in`` / ``order_out``: each sort, or None where it is the identity (what the
    training kernels take)."""
    perm_in: Tensor
    perm_out: Tensor
    row_reach: Tensor
    blocks: Tensor
    identity: bool
    order_in: Optional[Tensor] = None
    order_out: Optional[Tensor] = None


def _unless_identity(perm: Tensor) -> Optional[Tensor]:
    return None if torch.equal(perm, torch.arange(perm.numel(), dtype=perm.dtype)) else perm


_PLANS: dict = {}  # (degree bytes, strict, max_blocks) -> Plan; a few entries (one per layer and mask set)
_PLANS_MAX = 64


def plan(in_degrees: Tensor, out_degrees: Tensor, strict: bool, max_blocks: int = None) -> Plan:
    """The :class:`Plan` of these degree values (memoised on the values: a degree change,
    e.g. MADE's ``next_mask``, finds its own entry)."""
    max_blocks = TRAIN_BLOCKS if max_blocks is None else max_blocks
    din, dout = in_degrees.detach().cpu(), out_degrees.detach().cpu()
    key = (din.numpy().tobytes(), dout.numpy().tobytes(), bool(strict), int(max_blocks))
    got = _PLANS.get(key)
    if got is None:
        perm_in, perm_out, *rest = _cpp().masked_linear_plan(din.contiguous(), dout.contiguous(), bool(strict),
                                                             int(max_blocks))
        got = Plan(perm_in, perm_out, *rest, _unless_identity(perm_in), _unless_identity(perm_out))
        if len(_PLANS) >= _PLANS_MAX:
            try:  # the oldest entry (another thread may be evicting too)
                _PLANS.pop(next(iter(_PLANS)), None)
            except (StopIteration, RuntimeError):
                pass
        _PLANS[key] = got
    return got


def _rows_in_place(weight: Tensor) -> bool:
    """Whether the kernels can read the caller's weight as stored: 2-D, unit column stride."""
    return weight.dim() == 2 and weight.stride(1) == 1 and weight.stride(0) >= weight.shape[1]


def _in_place_plan(weight: Tensor, in_degrees: Tensor, out_degrees: Tensor, strict: bool):
    """The plan of the training path on the caller's weights, or None where it does not
    apply (degrees not already sorted, or weights without unit column stride)."""
    if not _rows_in_place(weight):
        return None
    p = plan(in_degrees, out_degrees, strict)
    return p if p.identity else None


def _triton():
    from ...kernels import masked_linear_triton  # imports triton: only when the backend is used
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


# ---- CUDA backend (csrc/masked_linear/masked_linear_cuda.cu) --------------------------------------

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


# ---- launchers -------------------------------------------------------------------------

# The training path (``use="train"`` forwards and every backward): where the degrees are
# already sorted, the kernels run on the caller's weights (no sorted copy of W per step;
# grad W written in place, zero outside the staircase): AVX-512 register tiles in fp32
# where the CPU has them, else BLAS per block with a small masked copy of each block's
# ragged slab. Otherwise the prepared (gathered, masked) weights as in evaluation.

def _slabs(w: Tensor, ip: Plan):
    """The masked slabs the in-place path's BLAS kernels read; None where the AVX-512 kernels run."""
    return None if _avx512_runs(w) else _cpp().masked_linear_slabs(w, ip.row_reach, ip.blocks)


def _avx512_runs(w: Tensor) -> bool:
    """Whether the in-place path runs the AVX-512 register-tile kernels (fp32 on a CPU with
    AVX-512: ``masked_linear_train_kernels``), which read W as stored, rather than BLAS per block."""
    return w.dtype == torch.float32 and _train_kernels() == "avx512"


@functools.lru_cache(maxsize=None)
def _train_kernels() -> str:
    """The in-place path's fp32 kernels in this process ("avx512" or "blas"; an older build: "blas")."""
    kernels = getattr(_cpp(), "masked_linear_train_kernels", None)
    return kernels() if kernels is not None else "blas"


@functools.lru_cache(maxsize=None)
def tiles_take_unsorted() -> bool:
    """Whether the one-call training entries here read unsorted degrees through the degree sorts: the
    AVX-512 kernels, in a build whose entries take ``perm_in`` / ``perm_out`` (an older one: sorted only)."""
    entry = getattr(_ext.get_ext(), "masked_linear_train_forward", None)
    return entry is not None and _train_kernels() == "avx512" and "perm_in" in (entry.__doc__ or "")


def train_orders(p: Plan) -> tuple:
    """The one-call entries' trailing ``(perm_in, perm_out)`` arguments for plan ``p``: none where both
    sorts are the identity (so that an older build, which lacks them, still runs sorted layers)."""
    return () if p.identity else (p.order_in, p.order_out)


def _train_plan(x: Tensor, weight: Tensor, in_degrees: Tensor, out_degrees: Tensor, strict: bool,
                x_sorted: bool = False, y_sorted: bool = False):
    """The :class:`Plan` of a training call that the cpp backend runs in one extension call per
    direction (``masked_linear_train_forward`` / ``_backward``: its ``row_reach``, and
    ``order_in`` / ``order_out`` where the degrees are not in order, which the kernels read
    through, docs/DESIGN.md section 4): fp32 CPU tensors outside torch.func transforms, the
    AVX-512 kernels, weights with unit column stride; else None. Also None where x or y is
    already in a sorted order (``x_sorted`` / ``y_sorted``) that is not the caller's: the
    kernels read x and write y in the caller's order."""
    if (x.dtype != torch.float32 or x.dim() != 2 or x.device.type != "cpu" or not _avx512_runs(weight)
            or transform_active() or not _rows_in_place(weight)):
        return None
    p = plan(in_degrees, out_degrees, strict)
    if not p.identity and (not tiles_take_unsorted() or (x_sorted and p.order_in is not None)
                           or (y_sorted and p.order_out is not None)):
        return None
    return p


# The optional stages ``train_forward`` / ``train_backward`` (dispatch.optional_launcher): a training
# call in one extension call each way, checks included, where it applies; else None, and the
# caller runs the required stages.

# An evaluation call (no graph) takes the same kernels from this many rows of x: they read W as
# stored, with no prepared copy, and check it for NaN/inf at every call, which below this many
# rows costs more than the cached evaluation path (2000->2000 at B=8: about even on the AMD EPYC).
EVAL_MIN_ROWS = 16


@register("masked_linear", "train_forward", "cpp", requires="masked_linear_train_forward", optional=True)
def cpp_train_forward(x, weight, bias, in_degrees, out_degrees, strict, activation, training=True, x_sorted=False,
                      y_sorted=False):
    """A training forward of the cpp backend in one call, checks included: y, or None where
    that path does not apply or x or the weight holds NaN/inf (nothing computed: the general
    path then gives the reference's NaNs, docs/DESIGN.md section 9). ``training=False``: a call that
    prepares nothing anew (``fresh_weights`` False: evaluation, or a graph for the bias alone), taken
    from :data:`EVAL_MIN_ROWS` rows (else None), which leaves the cache alone. ``x_sorted`` /
    ``y_sorted`` (x's columns / y's units already in the degree sort's order): only where that sort
    is the identity (else None)."""
    if not training and (x.dim() != 2 or x.shape[0] < EVAL_MIN_ROWS):
        return None
    p = _train_plan(x, weight, in_degrees, out_degrees, strict, x_sorted, y_sorted)
    if p is None or not (training or p.identity):  # (evaluation on unsorted degrees: the cached sorted copy)
        return None
    y, ok = _cpp().masked_linear_train_forward(x, weight.detach(), None if bias is None else bias.detach(),
                                               p.row_reach, ACTIVATIONS[activation], *train_orders(p))
    if ok and training:
        mark_training(weight)  # as the general path: an (unseen, fused) optimizer step follows
    return y if ok else None


@register("masked_linear", "train_backward", "cpp", requires="masked_linear_train_backward", optional=True)
def cpp_train_backward(grad_y, x, weight, y, bias, in_degrees, out_degrees, strict, activation, need_dx, need_dw,
                       need_db, check_inputs, x_sorted=False, y_sorted=False):
    """Its backward: (dx, dw, db), or None where that path does not apply or grad_y or the bias
    (with ``check_inputs``, when the forward did not check them, also x or any weight) holds NaN/inf."""
    p = _train_plan(x, weight, in_degrees, out_degrees, strict, x_sorted, y_sorted)
    if p is None or grad_y.dtype != torch.float32 or grad_y.device.type != "cpu":
        return None
    dx, dw, db, ok = _cpp().masked_linear_train_backward(
        grad_y, x, y, weight.detach(), None if bias is None else bias.detach(), p.row_reach, ACTIVATIONS[activation],
        need_dx, need_dw, need_db, check_inputs, *train_orders(p))
    if not ok:
        return None
    mark_training(weight)
    return dx, dw, db


@register("masked_linear", "forward", "cpp", requires="masked_linear_plan")
def _cpp_forward(x, weight, bias, in_degrees, out_degrees, strict, activation, x_sorted, y_sorted, use):
    ip = _in_place_plan(weight, in_degrees, out_degrees, strict) if use != "eval" else None
    if ip is not None:
        w = weight.detach()
        return _cpp().masked_linear_forward(x, w, bias, ip.perm_in, ip.perm_out, ip.row_reach, ip.blocks,
                                            ACTIVATIONS[activation], True, True, slabs=_slabs(w, ip), in_place=True)
    p = prepare(weight, in_degrees, out_degrees, strict, TRAIN_BLOCKS if use == "train" else None, use=use)
    return _cpp().masked_linear_forward(x, p.w_sorted, bias, p.perm_in, p.perm_out, p.row_reach, p.blocks,
                                        ACTIVATIONS[activation], x_sorted, y_sorted)


@register("masked_linear", "backward", "cpp", requires="masked_linear_plan")
def _cpp_backward(grad_y, x, weight, y, in_degrees, out_degrees, strict, activation, x_sorted, y_sorted,
                  need_dx, need_dw, need_db):
    ip = _in_place_plan(weight, in_degrees, out_degrees, strict)
    if ip is not None:
        mark_training(weight)  # an (unseen, fused) optimizer step may follow: evaluation rebuilds
        w = weight.detach()
        slabs = _slabs(w, ip) if need_dx else None
        blocks = ip.blocks if slabs is not None or _avx512_runs(w) else ip.blocks[:, [0, 1, 3]].contiguous()
        # (the BLAS kernels' grad W alone reads no slab)
        return _cpp().masked_linear_backward(grad_y, x, y, w, ip.perm_in, ip.perm_out, ip.row_reach, blocks,
                                          ACTIVATIONS[activation], True, True, need_dx, need_dw, need_db,
                                          slabs=slabs, in_place=True)
    # the forward's block count: the training one when it prepared anew (fresh_weights: x or W
    # requires grad), else evaluation's (only the bias trains): the cache then has its entry
    p = prepare(weight, in_degrees, out_degrees, strict, TRAIN_BLOCKS if need_dx or need_dw else None,
                use="backward")
    return _cpp().masked_linear_backward(grad_y, x, y, p.w_sorted, p.perm_in, p.perm_out, p.row_reach, p.blocks,
                                         ACTIVATIONS[activation], x_sorted, y_sorted, need_dx, need_dw, need_db)


@register("masked_linear", "forward", "cuda", requires="masked_linear_forward")
def _cuda_forward(x, weight, bias, in_degrees, out_degrees, strict, activation, x_sorted, y_sorted, use):
    p = prepare_sorted(weight, in_degrees, out_degrees, use)
    return _cuda().masked_linear_forward(x, p.w_sorted, bias, p.perm_in, p.perm_out, p.in_sorted, p.out_sorted,
                                         strict, ACTIVATIONS[activation], x_sorted, y_sorted)


@register("masked_linear", "backward", "cuda", requires="masked_linear_backward")
def _cuda_backward(grad_y, x, weight, y, in_degrees, out_degrees, strict, activation, x_sorted, y_sorted,
                   need_dx, need_dw, need_db):
    p = prepare_sorted(weight, in_degrees, out_degrees, "backward")
    return _cuda().masked_linear_backward(grad_y, x, y, p.w_sorted, p.perm_in, p.perm_out, p.in_sorted,
                                          p.out_sorted, strict, ACTIVATIONS[activation], x_sorted, y_sorted,
                                          need_dx, need_dw, need_db)


register("masked_linear", "forward", "triton")(_triton_forward)
register("masked_linear", "backward", "triton")(_triton_backward)
