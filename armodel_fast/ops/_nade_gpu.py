"""The GPU backends of the NADE ops: Triton (armodel_fast/kernels/*_triton.py) and
CUDA (armodel_fast._C_cuda, csrc/nade_cuda.cu), plugged into the same custom ops
as the C++ kernels through ``_nade_common._KERNELS``.

Triton modules are imported lazily, at the first call: ``TRITON_INTERPRET`` is
read when triton is imported, so importing armodel_fast must not import it.
Both backends return the gradient of ``sum(grad * log_prob)`` plus, when the
per-dimension outputs (``model(x)``) are used in a loss too, that of
``sum(grad_outputs * outputs)``: it joins each step's head gradient inside the
backward kernels.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Callable

import torch

from .. import _ext
from .._backend import BackendUnavailableError, register_kernel
from . import _nade_common as _c

_TRITON_MODULES = {"nade": "nade_triton", "categorical_nade": "categorical_nade_triton", "rnade": "rnade_triton"}
_CUDA_KIND = {"nade": 0, "categorical_nade": 1, "rnade": 2}


def _triton(model: str, stage: str) -> Callable:
    def launch(*args):
        mod = importlib.import_module(f"..kernels.{_TRITON_MODULES[model]}", __package__)
        fn = getattr(mod, f"{model}_{stage}")
        if stage == "backward":
            grad, grad_out, *rest = args
            return fn(grad, *rest, grad_out)
        return fn(*args)
    return launch


def _cuda(model: str, stage: str) -> Callable:
    kind = _CUDA_KIND[model]

    def launch(*args):
        ext = _ext.get_cuda_ext()
        if ext is None:
            raise BackendUnavailableError(f"backend 'cuda' cannot run {model}: {_ext.cuda_ext_error()}")
        if stage == "backward":
            grads = ext.nade_backward(kind, *args)  # (grad, grad_outputs, x, W, c, V, b, order, outputs)
            return tuple(grads) if model == "rnade" else tuple(grads[:4])
        return tuple(getattr(ext, f"nade_{stage}")(kind, *args))
    return launch


def register() -> None:
    """Add the Triton and CUDA launchers to the kernel table; register what can run here."""
    has_triton = importlib.util.find_spec("triton") is not None
    cuda_ext = _ext.get_cuda_ext()
    for model in _TRITON_MODULES:
        for stage in _c.STAGES:
            _c._KERNELS[(model, stage)]["triton"] = _triton(model, stage)
            _c._KERNELS[(model, stage)]["cuda"] = _cuda(model, stage)
        if has_triton:  # fp32/fp16/bf16 (kernels/triton_common.py PARAM_DTYPES); not imported here
            register_kernel(model, "triton", (torch.float32, torch.float16, torch.bfloat16))
        if cuda_ext is not None and hasattr(cuda_ext, "nade_forward"):
            register_kernel(model, "cuda")


