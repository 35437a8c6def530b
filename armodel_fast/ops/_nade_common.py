"""Plumbing shared by the NADE ops (:mod:`.nade`, :mod:`.categorical_nade`, :mod:`.rnade`).

* argument checks that name the argument (``ValueError`` / ``TypeError``), run
  before any kernel; the data-dependent ones (x binary or in range, ``order`` a
  permutation, ``u`` in [0, 1]) only in eager mode, because under
  ``torch.compile`` they would break the graph - the C++ launchers check the
  same values again, so compiled code still gets the clear error;
* the kernel table: ``kernel("nade", "forward", "cpp")`` calls the C++ function
  ``armodel_fast._C.nade_forward(kind, ...)`` (kind 0 binary, 1 categorical, 2 RNADE:
  the entry points of ``armodel_fast._C_cuda`` too). A later backend (Triton, CUDA)
  plugs into the same custom ops by adding its launchers to ``_KERNELS``.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
from torch import Tensor

from .. import _ext
from .._backend import BackendUnavailableError, check_backend_name, register_kernel, resolve_backend
from .._validate import _check_common, check_order

MODELS = ("nade", "categorical_nade", "rnade")
STAGES = ("forward", "backward", "sample")
CPP_DTYPES = (torch.float32, torch.float64)


KINDS = {"nade": 0, "categorical_nade": 1, "rnade": 2}  # the native entry points' `kind`


def _cpp_launcher(model: str, stage: str) -> Callable:
    """``armodel_fast._C.nade_<stage>(kind, *args)``; the backward returns (dW, dc, dV, db),
    plus dx for RNADE (the kernel's fifth result, None for the other kinds)."""
    name, kind = f"nade_{stage}", KINDS[model]

    def launch(*args):
        ext = _ext.get_ext()
        if ext is None or not hasattr(ext, name):
            why = _ext.ext_error() or f"armodel_fast._C has no {name} (rebuild: pip install --no-build-isolation -e .)"
            raise BackendUnavailableError(f"backend 'cpp' cannot run {model}_{stage}: {why}")
        out = getattr(ext, name)(kind, *args)
        if stage == "backward":
            return tuple(out) if model == "rnade" else tuple(out[:4])
        return tuple(out)
    return launch


# (model, stage) -> {backend: launcher}; launchers take the custom op's tensor arguments.
_KERNELS: Dict[Tuple[str, str], Dict[str, Callable]] = {
    (m, s): {"cpp": _cpp_launcher(m, s)} for m in MODELS for s in STAGES
}


def kernel(model: str, stage: str, backend: str) -> Callable:
    table = _KERNELS[(model, stage)]
    if backend not in table:
        raise BackendUnavailableError(
            f"armodel_fast::{model}_{stage} has no {backend!r} kernel (implemented: {', '.join(sorted(table))})")
    return table[backend]


def register_cpp(model: str) -> None:
    """Declare the cpp backend of ``model`` if the loaded extension has its kernels."""
    ext = _ext.get_ext()
    if ext is not None and all(hasattr(ext, f"nade_{s}") for s in STAGES):
        register_kernel(model, "cpp", CPP_DTYPES)


def compiling() -> bool:
    return torch.compiler.is_compiling()


@torch.compiler.assume_constant_result
def _auto_backend(model: str, device_type: str, dtype: torch.dtype) -> str:
    """What ``auto`` resolves to; evaluated once at trace time under ``torch.compile``."""
    return resolve_backend("auto", model, torch.device(device_type), dtype)


def pick_backend(backend, model: str, device: torch.device, dtype: torch.dtype) -> str:
    """``auto`` or an explicit name -> the backend that runs (explicit ones must be available;
    ``auto`` takes the first that has kernels for ``dtype`` parameters)."""
    if compiling():  # the registry lookups stay out of the graph: explicit names as given, auto a constant
        return _auto_backend(model, device.type, dtype) if backend == "auto" else backend
    return resolve_backend(check_backend_name(backend), model, device, dtype)


def check_tensor(name: str, t) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_params(W, c, V, b, shapes: Dict[str, tuple], names: Dict[str, str]) -> None:
    """W, c, V, b: tensors of the given shapes, one floating dtype, one device."""
    for name, t in (("W", W), ("c", c), ("V", V), ("b", b)):
        check_tensor(name, t)
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if tuple(t.shape) != tuple(shapes[name]):
            raise ValueError(f"{name} must have shape {names[name]} = {list(shapes[name])}, got {list(t.shape)}")
        if name != "W":
            if t.dtype != W.dtype:
                raise TypeError(f"{name} must have the same dtype as W ({W.dtype}), got {t.dtype}")
            if t.device != W.device:
                raise ValueError(f"{name} is on {t.device} but W is on {W.device}")


def check_backend_dtype(backend: str, W: Tensor) -> None:
    if backend == "cpp":
        if W.dtype not in CPP_DTYPES:
            raise TypeError(f"W must be float32 or float64 for the cpp backend, got {W.dtype}")
        if W.device.type != "cpu":
            raise ValueError(f"the cpp backend runs on CPU tensors, but W is on {W.device}")


def order_arg(order, D: int) -> Tensor:
    """``order`` as a CPU int64 permutation (checked in eager mode)."""
    if compiling():
        check_tensor("order", order)
        return order.detach().to("cpu", torch.long).contiguous()
    return check_order(order, D)


def x_arg(x, D: int, W: Tensor, kind: str, check_values: bool = True) -> Tensor:
    """x [B, D]: ``binary`` or ``real`` (-> W.dtype); ``check_values=False`` leaves the
    value check (0/1, finite) to the C++ launcher, which does it in one serial pass."""
    from .._validate import check_binary_x, check_real_x
    if check_values and not compiling():
        if kind == "binary":
            return check_binary_x(x, D, W.device, W.dtype).contiguous()
        if kind == "real":
            return check_real_x(x, D, W.device, W.dtype).contiguous()
        raise AssertionError(kind)
    _check_common("x", check_tensor("x", x), D, W.device)
    return x.to(W.dtype).contiguous()


def u_arg(u, D: int, trailing: tuple, W: Tensor, check_values: bool = True) -> Tensor:
    """Uniforms u [n, D, *trailing] -> W.dtype (values checked in eager mode, or by the launcher)."""
    _check_common("u", check_tensor("u", u), D, W.device, trailing)
    if not u.dtype.is_floating_point:
        raise TypeError(f"u must be a floating-point tensor of uniforms, got dtype {u.dtype}")
    if check_values and not compiling() and u.numel() and not bool(((u >= 0) & (u <= 1)).all()):
        raise ValueError("u must hold uniforms in [0, 1]")
    return u.to(W.dtype).contiguous()


def check_return_logits(flag) -> bool:
    if not isinstance(flag, bool):
        raise TypeError(f"return_logits must be a bool, got {type(flag).__name__}")
    return flag


def attach_autograd(forward_op, backward_op, x_has_grad: bool, backward_with_dx=None) -> None:
    """Autograd of a NADE forward op ``(x, W, c, V, b, order, backend) -> (log_prob, outputs)``.

    ``backward_op(grad_log_prob, grad_outputs or None, x, W, c, V, b, order, outputs, backend)``
    returns ``(dW, dc, dV, db)``, plus ``dx`` last when ``x_has_grad`` (RNADE). Otherwise,
    when x itself needs a gradient, ``backward_with_dx`` (same arguments) returns all five.
    """
    def setup_context(ctx, inputs, output):
        x, W, c, V, b, order, backend = inputs
        ctx.save_for_backward(x, W, c, V, b, order, output[1])
        ctx.backend = backend

    def backward(ctx, grad_log_prob, grad_outputs):
        x, W, c, V, b, order, outputs = ctx.saved_tensors
        if grad_log_prob is None:
            grad_log_prob = outputs.new_zeros(outputs.shape[0])
        need = ctx.needs_input_grad
        with_dx = x_has_grad or (need[0] and backward_with_dx is not None)
        grads = (backward_op if x_has_grad or not with_dx else backward_with_dx)(
            grad_log_prob.contiguous(), None if grad_outputs is None else grad_outputs.contiguous(),
            x, W, c, V, b, order, outputs, ctx.backend)
        dx = grads[4] if with_dx else None
        return tuple(g if need[i] else None for i, g in enumerate((dx,) + tuple(grads[:4]))) + (None, None)

    forward_op.register_autograd(backward, setup_context=setup_context)
    forbid_double_backward(backward_op, "NADE")


def forbid_double_backward(backward_op, what: str) -> None:
    """A clear error instead of PyTorch's "no autograd formula" when a second derivative is
    taken through ``backward_op`` (``create_graph=True``, then backward again)."""
    def backward(ctx, *grads):
        raise NotImplementedError(
            f"second-order gradients through the fast {what} kernels (create_graph=True, then differentiating "
            f"the gradients) are not implemented; use backend='reference' for them")

    backward_op.register_autograd(backward, setup_context=lambda ctx, inputs, output: None)
