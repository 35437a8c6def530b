"""The public NADE-family functions: validate once, resolve the backend, dispatch.

Chain (STYLE.md): native / Triton kernels -> launchers (``launchers.py``, in the
dispatch table) -> custom ops ``armodel_fast::<op>_{forward,backward,sample}``
(``custom_ops.py``) -> :func:`log_prob` / :func:`sample` (here; the reference
backend runs the plain PyTorch loop of ``armodel_fast.reference``) -> the modules
in ``armodel_fast.nn``.

Every argument check runs here, before any backend, and is the same for all of
them (the value checks - x binary or in range, ``order`` a permutation, ``u`` in
[0, 1] - only in eager mode: under ``torch.compile`` they would break the graph,
and the native launchers check the same values again).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ... import dispatch
from ..._validate import check_bool, check_order, check_tensor, check_uniforms
from .custom_ops import OPS
from .spec import SPECS, NadeSpec


def check_params(spec: NadeSpec, W, c, V, b) -> dict:
    """W, c, V, b: tensors of the spec's shapes, one floating dtype, one device -> {H, D, K}."""
    check_tensor("W", W)
    if W.dim() != len(spec.shapes["W"]):
        raise ValueError(f"W must have shape {spec.shape_str('W')}, got {list(W.shape)}")
    if any(isinstance(s, str) and s not in spec.shapes["W"] for s in spec.shapes["V"]):  # V gives a size (K)
        check_tensor("V", V)
        tmpl = spec.shapes["V"]
        if V.dim() != len(tmpl) or any(isinstance(s, int) and V.shape[i] != s for i, s in enumerate(tmpl)):
            raise ValueError(f"V must have shape {spec.shape_str('V')}, got {list(V.shape)}")
    sizes = spec.sizes(W, V)
    for name, t in (("W", W), ("c", c), ("V", V), ("b", b)):
        check_tensor(name, t)
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        want = spec.shape(name, sizes)
        if tuple(t.shape) != want:
            raise ValueError(f"{name} must have shape {spec.shape_str(name)} = {list(want)}, got {list(t.shape)}")
        if name != "W":
            if t.dtype != W.dtype:
                raise TypeError(f"{name} must have the same dtype as W ({W.dtype}), got {t.dtype}")
            if t.device != W.device:
                raise ValueError(f"{name} is on {t.device} but W is on {W.device}")
    return sizes


def _prepare(spec: NadeSpec, W, c, V, b, backend):
    """Validated sizes and the backend that runs."""
    sizes = check_params(spec, W, c, V, b)
    backend = dispatch.resolve_backend(backend, spec.op, W.device, W.dtype)
    dispatch.check_dtype(spec.op, backend, W.dtype, "W")
    return sizes, backend


def _run(spec: NadeSpec, stage: str, backend: str, *args):
    """The reference's plain PyTorch loop (autograd records it), or the backend's custom op
    (contiguous tensors; its autograd calls the backend's backward kernel)."""
    if backend == "reference":
        if stage == "sample":
            return spec.ref_sample(*args)
        x, W, c, V, b, order = args
        outputs = spec.ref_outputs(x, W, c, V, b, order)
        return spec.head_log_prob(outputs, x).sum(-1), outputs
    op = getattr(OPS[spec.op], stage)
    return op(*(a.contiguous() for a in args), backend)


def log_prob(spec: NadeSpec, x, W, c, V, b, order, backend: str = "cpp", return_logits: bool = False):
    """log p(x) [B] (and the per-step outputs [B, D, *spec.output_dims] with ``return_logits``),
    differentiable w.r.t. W, c, V, b (and x when it is real or needs a gradient)."""
    check_bool("return_logits", return_logits)
    sizes, backend = _prepare(spec, W, c, V, b, backend)
    x = spec.check_x(x, sizes, W)  # the spec's x kind (spec.X_KINDS)
    order = check_order(order, sizes["D"])  # CPU int64 permutation
    lp, outputs = _run(spec, "forward", backend, x, W, c, V, b, order)
    return (lp, outputs) if return_logits else lp


@torch.no_grad()
def sample(spec: NadeSpec, W, c, V, b, order, u, backend: str = "cpp"):
    """Samples x [n, D] and their log p [n] from uniforms u [n, D, *spec.uniform_trailing].
    Not differentiable."""
    sizes, backend = _prepare(spec, W, c, V, b, backend)
    check_tensor("u", u)
    u = check_uniforms(u, u.shape[0] if u.dim() else 0, sizes["D"], spec.uniform_trailing, W.device,
                       W.dtype).contiguous()
    order = check_order(order, sizes["D"])  # CPU int64 permutation
    return _run(spec, "sample", backend, W.detach(), c.detach(), V.detach(), b.detach(), order, u)


# ---- the named functions (one pair per model) ---------------------------------------

def nade_log_prob(x: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor, order, backend: str = "cpp",
                  return_logits: bool = False):
    """Binary NADE: log p(x) [B] of x [B, D] in {0, 1}; ``W [H, D]``, ``c [H]``, ``V [D, H]``, ``b [D]``.
    With ``return_logits`` also the logits [B, D] (dimension space). ``backend``: ``"cpp"``,
    ``"triton"``, ``"cuda"``, ``"reference"`` or ``"auto"``."""
    return log_prob(SPECS["nade"], x, W, c, V, b, order, backend, return_logits)


def nade_sample(W: Tensor, c: Tensor, V: Tensor, b: Tensor, order, u: Tensor, backend: str = "cpp"):
    """Binary NADE samples x [n, D] (``x_d = 1{u_d < sigmoid(logit_d)}``) and log p [n] from u [n, D]."""
    return sample(SPECS["nade"], W, c, V, b, order, u, backend)


def categorical_nade_log_prob(x: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor, order,
                              backend: str = "cpp", return_logits: bool = False):
    """Categorical NADE: log p(x) [B] of class indices x [B, D]; ``W [H, D, K]``, ``c [H]``,
    ``V [D, K, H]``, ``b [D, K]``; the input update adds ``W[:, d, x_d]``. With ``return_logits``
    also the logits [B, D, K]."""
    return log_prob(SPECS["categorical_nade"], x, W, c, V, b, order, backend, return_logits)


def categorical_nade_sample(W: Tensor, c: Tensor, V: Tensor, b: Tensor, order, u: Tensor, backend: str = "cpp"):
    """Categorical NADE samples x int64 [n, D] by the inverse-CDF rule and log p [n], from u [n, D]."""
    return sample(SPECS["categorical_nade"], W, c, V, b, order, u, backend)


def rnade_log_prob(x: Tensor, W: Tensor, c: Tensor, V: Tensor, b: Tensor, order, backend: str = "cpp",
                   return_logits: bool = False):
    """RNADE: log-density [B] of real x [B, D] (differentiable w.r.t. x too); ``W [H, D]``, ``c [H]``,
    ``V [D, 3, K, H]``, ``b [D, 3, K]``. With ``return_logits`` also the per-step mixture
    parameters [B, D, 3, K] (logits, means, log-scales)."""
    return log_prob(SPECS["rnade"], x, W, c, V, b, order, backend, return_logits)


def rnade_sample(W: Tensor, c: Tensor, V: Tensor, b: Tensor, order, u: Tensor, backend: str = "cpp"):
    """RNADE samples x [n, D] and their log-density [n] from u [n, D, 2] (component, quantile)."""
    return sample(SPECS["rnade"], W, c, V, b, order, u, backend)
