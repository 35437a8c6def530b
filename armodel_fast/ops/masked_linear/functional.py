"""masked_linear: ``act(x @ (W * M).T + bias)`` with the mask computed from degrees.

Chain (STYLE.md): C++ kernels ``masked_linear_{prepare,forward,backward}`` ->
torch custom ops ``armodel_fast::masked_linear`` / ``masked_linear_backward``
(fake impls + autograd, so ``torch.compile`` traces them without graph breaks)
-> :func:`masked_linear` (validation, ``backend=``) -> ``nn.MaskedLinear``.

``M[k, j] = 1{out_degrees[k] >= in_degrees[j]}`` (``>`` when ``strict``); no
``[out, in]`` mask is ever read. The CPU kernel sorts inputs and outputs by
degree (a permutation invisible to the caller), which turns the mask into a
staircase, and runs one BLAS matmul per block of rows over only the inputs
the block reaches (docs/DESIGN.md section 4); with degrees already in order, in
fp32 on a CPU with AVX-512, training and evaluation calls of at least
``launchers.EVAL_MIN_ROWS`` rows run register tiles over the staircase instead, on
the weights as stored (``csrc/masked_linear/masked_linear_avx512_cpu.cpp``). The Triton backend
(``kernels/masked_linear_triton.py``) gets the same stable degree sort from
:func:`prepare_triton` (sorted weights, sorted degrees and their staircase) and
computes the mask inside each tile, skipping all-zero tiles; so does the CUDA
backend (``csrc/masked_linear/masked_linear_cuda.cu``, operands from :func:`prepare_sorted`). The prepared
weights are cached per weight tensor and backend, keyed on the tensor itself
(weak reference), its version counter, data pointer and layout and on the
degree values. A forward that records a graph (training) always prepares anew
and its backward reuses that; calls without a graph (evaluation, sampling)
reuse what an earlier such call built while the weights are unchanged, except
where the register tiles run on the weights as stored (above: no cache). Any
in-place update that PyTorch tracks (``load_state_dict``, ``copy_`` under
``no_grad``) or a degree change (MADE's ``next_mask``) invalidates the entry,
and so does a training step, even with a fused optimizer, whose updates the
version counter does not see (a training forward marks the entry, and a global
optimizer post-step hook marks the parameters of every fused step: ``cache.py``). Writes through ``weight.data`` bypass the version
counter too: every cache hit therefore also compares 64 connected weight
entries (at fixed random positions) with their values when the entry was
built, which catches bulk writes (``.data.mul_``, ``.data.normal_()``,
``.data.copy_``, EMA updates); a ``.data`` write that changes only a few
entries can still go unseen: call :func:`clear_cache` after those, or run
inside ``with caching(False):``.

Non-finite values (docs/DESIGN.md section 9): the forward marks NaN where the
reference's dense product has one (:func:`_nan_where_reference_is`). The kernels'
gradients would not carry the reference's NaN/inf either (``g @ (W * M)`` and
``(g.T @ x) * M`` are NaN at masked-out positions where g, x or W is NaN/inf), so the
backward op first checks x, the weight, the bias and the upstream gradient (one pass
over each) and, if one holds NaN/inf, computes the gradients as the reference's autograd
does (``torch.func.vjp`` of the dense ``act(x @ (W * M).T + bias)``) and says so
(:func:`armodel_fast.dispatch.note_reference_backward`: a ``RuntimeWarning`` and a
count). The check runs inside the op, so compiled graphs (``torch.compile``) get it too.
On the cpp backend's AVX-512 path (fp32, degrees in order) the checks and the
products are one extension call each way (the optional stages ``train_forward`` /
``train_backward``, ``launchers.cpp_train_forward`` / ``_backward``);
where a check finds NaN/inf nothing is computed and the path above runs.

Files: ``cache.py`` (the prepared-weight cache), ``launchers.py`` (each backend's
prepare / forward / backward, in the dispatch table), ``functional.py`` (the
custom ops and :func:`masked_linear`).
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ... import dispatch
from ...dispatch import note_reference_backward
from ..._validate import batched_backward, check_bool
from ...reference.masked_linear import degree_mask
from .._autograd import all_finite, any_nonfinite, forbid_double_backward
from .cache import _cached, degree_mask_for, mark_training
from .launchers import ACTIVATIONS
from . import chain  # noqa: F401 - registers the optional stage ("masked_linear", "train_chain", "cpp")

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_REF_ACT = {"none": lambda t: t, "relu": F.relu, "elu": F.elu, "tanh": torch.tanh}


# ---- custom ops -----------------------------------------------------------------

@torch.library.custom_op("armodel_fast::masked_linear", mutates_args=())
def _masked_linear_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], in_degrees: Tensor,
                      out_degrees: Tensor, strict: bool, activation: str, backend: str,
                      x_sorted: bool = False, y_sorted: bool = False, fresh: bool = False) -> Tensor:
    """x [B, in] -> [B, out]. ``x_sorted``/``y_sorted``: x's columns / y's units are in
    degree-sorted (stable) order, as between chained MADE layers (no gather/scatter).
    ``fresh``: prepare the weights anew instead of from the cache (training: see
    :func:`fresh_weights`); the backward finds them in the cache."""
    return _forward_impl(x, weight, bias, in_degrees, out_degrees, strict, activation, backend, x_sorted, y_sorted,
                         fresh)[0]


def _forward_impl(x, weight, bias, in_degrees, out_degrees, strict, activation, backend, x_sorted, y_sorted, fresh):
    """(y, whether x and the weight hold no NaN/inf: the backward need not check them again)."""
    one_call = dispatch.optional_launcher("masked_linear", "train_forward", backend)
    if one_call is not None:  # checks and products in one extension call, where it applies (evaluation too)
        y = one_call(x, weight, bias, in_degrees, out_degrees, strict, activation, training=fresh, x_sorted=x_sorted,
                     y_sorted=y_sorted)
        if y is not None:
            return y, True
    use = "train" if fresh else "eval"
    y = dispatch.launcher("masked_linear", "forward", backend)(
        x, weight, bias, in_degrees, out_degrees, strict, activation, x_sorted, y_sorted, use)
    return _nan_where_reference_is(y, x, weight, in_degrees, out_degrees, strict, x_sorted, y_sorted, use)


def _masked_out_nonfinite_rows(weight: Tensor, in_degrees: Tensor, out_degrees: Tensor, strict: bool):
    """[out] bool, rows holding a NaN/inf weight where the mask is 0 (None: there are none)."""
    w = weight.detach()
    if not any_nonfinite(w):
        return None
    masked_out = degree_mask(in_degrees.to(w.device), out_degrees.to(w.device), strict, torch.bool).logical_not()
    return (~torch.isfinite(w) & masked_out).any(1)


def _nan_where_reference_is(y, x, weight, in_degrees, out_degrees, strict, x_sorted, y_sorted, use):
    """The reference's NaNs that the fast kernels, which skip masked-out connections, do not make:
    its dense ``x @ (W * M).T`` gives NaN in output k when a masked-out ``W[k, j]`` is NaN/inf
    (NaN/inf * 0) or when an input ``x[b, j]`` that k is not connected to is NaN/inf (for row b).
    The weight check is one pass over W (the bit test of
    :func:`armodel_fast.ops._autograd.any_nonfinite`; in evaluation cached with the prepared
    weights), the input check one pass over x; the exact masks are built only when either
    finds something. Returns (y, whether x and W were both finite)."""
    if use == "train":  # new weights every step: a cache entry would cost more than the check
        mark_training(weight)  # (and an evaluation after the step must not trust the older entries)
        rows = _masked_out_nonfinite_rows(weight, in_degrees, out_degrees, strict)
    else:
        rows = _cached("nonfinite", weight, in_degrees, out_degrees, strict, 0,
                       lambda din, dout: _masked_out_nonfinite_rows(weight, din, dout, strict),
                       "eval" if use == "backward" else use)
    x_bad = any_nonfinite(x)
    if rows is None and not x_bad:
        return y, True
    bad_x = ~torch.isfinite(x.detach())
    din, dout = in_degrees.to(y.device), out_degrees.to(y.device)
    perm_out = torch.sort(dout, stable=True).indices  # the kernels' stable degree sort (x_sorted / y_sorted)
    poison = torch.zeros(y.shape, dtype=torch.bool, device=y.device)
    if rows is not None:
        poison |= (rows.to(y.device)[perm_out] if y_sorted else rows.to(y.device))[None, :]
    if x_bad:
        din_x = torch.sort(din, stable=True).values if x_sorted else din
        dout_y = dout[perm_out] if y_sorted else dout
        unconnected = degree_mask(din_x, dout_y, strict, torch.bool).logical_not()
        poison |= (bad_x.to(torch.float32) @ unconnected.T.to(torch.float32)) > 0
    return y.masked_fill(poison, float("nan")), False


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
                               need_db: bool, bias: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    return _backward_impl(grad_y, x, weight, y, in_degrees, out_degrees, strict, activation, backend, x_sorted,
                          y_sorted, need_dx, need_dw, need_db, bias)


def _backward_impl(grad_y, x, weight, y, in_degrees, out_degrees, strict, activation, backend, x_sorted, y_sorted,
                   need_dx, need_dw, need_db, bias, known_finite=False):
    """(dx, dw, db), empty where not needed: the backend's kernels, or with NaN/inf among the
    inputs the reference's gradients (module docstring). ``known_finite``: the forward found x
    and the weight finite (they are saved unchanged), so only the bias and grad_y are checked."""
    one_call = dispatch.optional_launcher("masked_linear", "train_backward", backend)
    if one_call is not None:  # checks and products in one extension call, where it applies
        grads = one_call(grad_y, x, weight, y, bias, in_degrees, out_degrees, strict, activation, need_dx, need_dw,
                         need_db, not known_finite, x_sorted=x_sorted, y_sorted=y_sorted)
        if grads is not None:
            return tuple(g if need else x.new_empty(0) for g, need in zip(grads, (need_dx, need_dw, need_db)))
    if not (all_finite(bias, grad_y) if known_finite else all_finite(weight, bias, x, grad_y)):
        note_reference_backward("masked_linear", backend)
        return _reference_backward(grad_y, x, weight, bias, in_degrees, out_degrees, strict, activation, x_sorted,
                                   y_sorted, (need_dx, need_dw, need_db))
    dx, dw, db = dispatch.launcher("masked_linear", "backward", backend)(
        grad_y, x, weight, y, in_degrees, out_degrees, strict, activation, x_sorted, y_sorted, need_dx, need_dw,
        need_db)
    return (dx if need_dx else x.new_empty(0), dw if need_dw else x.new_empty(0), db if need_db else x.new_empty(0))


@_masked_linear_backward_op.register_fake
def _(grad_y, x, weight, y, in_degrees, out_degrees, strict, activation, backend, x_sorted, y_sorted,
      need_dx, need_dw, need_db, bias=None):
    return (x.new_empty(x.shape if need_dx else (0,)), x.new_empty(weight.shape if need_dw else (0,)),
            x.new_empty((weight.shape[0],) if need_db else (0,)))


def _setup_context(ctx, inputs, output):
    x, weight, bias, in_degrees, out_degrees, strict, activation, backend, x_sorted, y_sorted, _ = inputs
    # Degrees are cloned (a few KB): MADE rewrites its degree buffers in place when it
    # switches masks, and the backward must use the forward's mask.
    ctx.save_for_backward(x, weight, bias, in_degrees.clone(), out_degrees.clone(),
                          output if activation != "none" else None)
    ctx.args = (strict, activation, backend, x_sorted, y_sorted, bias is not None)


def _grads(ctx, grad_y, run):
    """The autograd backward of both paths: ``run`` is the backward custom op or :func:`_backward_impl`;
    under vmap (``autograd.grad(..., is_grads_batched=True)``) the reference's, said so."""
    x, weight, bias, in_degrees, out_degrees, y = ctx.saved_tensors
    strict, activation, backend, x_sorted, y_sorted, has_bias = ctx.args
    need_dx, need_dw, need_db = ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2]
    if batched_backward(grad_y):
        note_reference_backward("masked_linear", backend, "transform")
        dx, dw, db = _reference_backward(grad_y, x, weight, bias, in_degrees, out_degrees, strict, activation,
                                         x_sorted, y_sorted, (need_dx, need_dw, need_db))
    else:
        dx, dw, db = run(grad_y, x, weight, y, in_degrees, out_degrees, strict, activation, backend, x_sorted,
                         y_sorted, need_dx, need_dw, need_db, bias)
    return (dx if need_dx else None, dw if need_dw else None, db if need_db else None,
            None, None, None, None, None, None, None, None)


def _backward(ctx, grad_y):
    return _grads(ctx, grad_y, _masked_linear_backward_op)


def _reference_backward(grad_y, x, weight, bias, in_degrees, out_degrees, strict, activation, x_sorted, y_sorted,
                        need):
    """(dx, dw, db) of ``act(x @ (W * M).T + bias)`` as the reference's autograd computes them
    (``torch.func.vjp``, which runs inside a custom op), in the kernels' unit orders when
    ``x_sorted`` / ``y_sorted``: the backward op's NaN/inf path. Not needed: empty tensors."""
    din, dout = in_degrees.to(weight.device), out_degrees.to(weight.device)
    perm_in = torch.sort(din, stable=True).indices if x_sorted else None  # the kernels' stable degree sort
    perm_out = torch.sort(dout, stable=True).indices if y_sorted else None
    if x_sorted:
        din = din[perm_in]
    if y_sorted:
        dout = dout[perm_out]
    mask = degree_mask(din, dout, strict, weight.dtype)

    def layer(x, w, *b):  # b: (bias,) or () (vjp takes tensors only)
        if x_sorted:  # x's column i is input perm_in[i]
            w = w.index_select(1, perm_in)
        if y_sorted:
            w, b = w.index_select(0, perm_out), tuple(t.index_select(0, perm_out) for t in b)
        return _REF_ACT[activation](F.linear(x, w * mask, *b))

    _, vjp = torch.func.vjp(layer, x, weight, *(() if bias is None else (bias,)))
    grads = vjp(grad_y) + ((None,) if bias is None else ())
    return tuple(g if n and g is not None else x.new_empty(0) for g, n in zip(grads, need))


_masked_linear_op.register_autograd(_backward, setup_context=_setup_context)
forbid_double_backward(_masked_linear_backward_op, "masked_linear (MADE, FVSBN)")


class _EagerMaskedLinear(torch.autograd.Function):
    """The same forward and backward as the custom op, without the custom-op machinery
    (a few hundred microseconds per training step in eager mode, a measurable share of
    a small layer's time). Under ``torch.compile`` :func:`masked_linear_call` uses the
    custom op; a backward that records a graph (``create_graph=True``) goes through the
    custom backward op, so differentiating the gradients raises the same error."""

    @staticmethod
    def forward(ctx, x, weight, bias, in_degrees, out_degrees, strict, activation, backend, x_sorted, y_sorted,
                fresh):
        inputs = (x, weight, bias, in_degrees, out_degrees, strict, activation, backend, x_sorted, y_sorted, fresh)
        y, finite = _forward_impl(*inputs)
        _setup_context(ctx, inputs, y)
        ctx.known_finite = finite  # the backward then checks only the bias and grad_y
        return y

    @staticmethod
    def backward(ctx, grad_y):
        if torch.is_grad_enabled():  # create_graph=True: the custom backward op refuses a second derivative
            return _backward(ctx, grad_y)
        return _grads(ctx, grad_y, functools.partial(_backward_impl, known_finite=ctx.known_finite))


def masked_linear_call(x: Tensor, weight: Tensor, bias: Optional[Tensor], in_degrees: Tensor, out_degrees: Tensor,
                       strict: bool, activation: str, backend: str, x_sorted: bool = False, y_sorted: bool = False,
                       fresh: bool = False) -> Tensor:
    """``_masked_linear_op(...)`` (same arguments and result): the custom op under
    ``torch.compile``; in eager mode the kernels directly (no graph) or through
    :class:`_EagerMaskedLinear` (a graph)."""
    if torch.compiler.is_compiling():
        return _masked_linear_op(x, weight, bias, in_degrees, out_degrees, strict, activation, backend, x_sorted,
                                 y_sorted, fresh)
    if _records_graph(x, weight, bias):
        return _EagerMaskedLinear.apply(x, weight, bias, in_degrees, out_degrees, strict, activation, backend,
                                        x_sorted, y_sorted, fresh)
    with torch.no_grad():
        return _forward_impl(x, weight, bias, in_degrees, out_degrees, strict, activation, backend, x_sorted,
                             y_sorted, fresh)[0]


def _records_graph(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> bool:
    """Whether a call records an autograd graph (training)."""
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))


# ---- public function ---------------------------------------------------------------

def degrees_sorted(d: Tensor) -> bool:
    """Whether a degree vector is already in (non-decreasing) order: the kernels' stable sort is the identity."""
    return d.numel() < 2 or bool((d[1:] >= d[:-1]).all())


def auto_work(x: Tensor, weight: Tensor, bias, in_degrees: Tensor, out_degrees: Tensor) -> "dispatch.Work":
    """What ``backend="auto"``'s size rule looks at for one masked layer call (:class:`dispatch.Work`);
    under torch.compile the degrees' values are not read (a graph break): sized as sorted."""
    n_out, n_in = weight.shape
    return dispatch.Work(x.numel() // max(n_in, 1) * n_in * n_out, _records_graph(x, weight, bias),
                         torch.compiler.is_compiling() or (degrees_sorted(in_degrees) and degrees_sorted(out_degrees)),
                         weight.dtype)


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
    if weight.dtype not in FLOAT_DTYPES:
        raise TypeError(f"weight must be a float16, bfloat16, float32 or float64 tensor, got dtype {weight.dtype}")
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
    check_bool("strict", strict)
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    backend = dispatch.resolve_backend(backend, "masked_linear", x.device,
                                       work=lambda: auto_work(x, weight, bias, in_degrees, out_degrees))
    if backend == "reference":
        mask = degree_mask_for(in_degrees, out_degrees, strict, weight.dtype, weight.device)
        return _REF_ACT[activation](F.linear(x, weight * mask, bias))
    lead = x.shape[:-1]
    x2 = x.reshape(lead.numel(), n_in)  # (numel: n_in may be 0)
    one_node = dispatch.optional_launcher("masked_linear", "train_chain", backend)  # training in one node (chain.py)
    y = one_node(x2, [(weight, bias, in_degrees, out_degrees, strict, activation)]) if one_node is not None else None
    if y is None:
        y = masked_linear_call(x2, weight, bias, in_degrees, out_degrees, strict, activation, backend,
                               fresh=fresh_weights(x, weight))
    return y.reshape(*lead, n_out)

