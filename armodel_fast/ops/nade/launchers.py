"""The NADE kernels of every backend, registered in :mod:`armodel_fast.dispatch`.

A launcher takes the spec and the custom op's tensor arguments:

* ``forward(spec, x, W, c, V, b, order) -> (log_prob [B], outputs [B, D, ...])``
* ``backward(spec, grad, grad_outputs or None, x, W, c, V, b, order, outputs)
  -> (dW, dc, dV, db)`` plus ``dx`` when ``spec.x_has_grad``: the gradient of
  ``sum(grad * log_prob) + sum(grad_outputs * outputs)``
* ``sample(spec, W, c, V, b, order, u) -> (x [n, D], log_prob [n])``

cpp and cuda share one launcher: ``ext.nade_<stage>(spec.kind, ...)``. Triton
modules are imported at the first call: ``TRITON_INTERPRET`` is read when triton
is imported, so importing armodel_fast must not import it.
"""
from __future__ import annotations

import importlib
from typing import Callable

import torch

from ... import _ext
from ...dispatch import BackendUnavailableError, register
from .spec import SPECS

STAGES = ("forward", "backward", "sample")
CPP_DTYPES = (torch.float32, torch.float64)
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # kernels/triton_common.py PARAM_DTYPES


# backend -> (the native module or None, why it is None); both expose the same
# nade_<stage>(kind, ...) functions (csrc/common/ops.h).
_MODULES = {"cpp": (_ext.get_ext, _ext.ext_error), "cuda": (_ext.get_cuda_ext, _ext.cuda_ext_error)}


def _native(backend: str, stage: str) -> Callable:
    """The one launcher of both native modules: ``ext.nade_<stage>(spec.kind, ...)``."""
    get, why = _MODULES[backend]

    def launch(spec, *args):
        ext = get()
        if ext is None:
            raise BackendUnavailableError(f"backend {backend!r} cannot run nade_{stage}: {why()}")
        out = tuple(getattr(ext, f"nade_{stage}")(spec.kind, *args))
        return out[:5 if spec.x_has_grad else 4] if stage == "backward" else out
    return launch


def _triton(stage: str) -> Callable:
    def launch(spec, *args):
        mod = importlib.import_module(f"armodel_fast.kernels.{spec.triton_module}")
        fn = getattr(mod, f"{spec.op}_{stage}")
        if stage == "backward":  # the Triton kernels take grad_outputs last, as a keyword-able argument
            grad, grad_outputs, *rest = args
            return tuple(fn(grad, *rest, grad_outputs))
        return tuple(fn(*args))
    return launch


for _spec in SPECS.values():  # a spec without a native kind or a Triton module runs on the reference only
    for _stage in STAGES:
        if _spec.kind is not None:
            register(_spec.op, _stage, "cpp", dtypes=CPP_DTYPES, requires="nade_forward")(_native("cpp", _stage))
            register(_spec.op, _stage, "cuda", requires="nade_forward")(_native("cuda", _stage))
        if _spec.triton_module is not None:
            register(_spec.op, _stage, "triton", dtypes=TRITON_DTYPES)(_triton(_stage))
