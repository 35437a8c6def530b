"""MADE and FVSBN through the fast masked linear layer (DESIGN.md sections 1 and 4).

* :func:`made_forward` / :func:`fvsbn_logits`: the reference forward with every
  masked layer run by :func:`armodel_fast.ops.masked_linear.masked_linear`
  (staircase blocks, fused activation, cached degree-sorted weights).
* :func:`made_sample` / :func:`fvsbn_sample`: all D steps in one call that
  computes every hidden unit once (``made_sample`` in csrc/made_cpu.cpp, one
  launch in kernels/made_sample_triton.py and csrc/made_cuda.cu), from
  caller-supplied uniforms, sample for sample equal to the D-pass reference
  sampler; ``head="affine"`` runs MADE's Gaussian (K=1) inverse the same way.

The layer tuples are those of :func:`armodel_fast.reference.made.made_forward`:
hidden ``(weight, bias, in_degrees, out_degrees)``, output the same (strict),
direct ``(weight, in_degrees, out_degrees)`` (strict, no bias), and
``context_weights = (Wc_hidden, Wc_out)``.
"""
from __future__ import annotations

import importlib.util
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _ext
from .._backend import check_backend_name, register_kernel, resolve_backend
from .._validate import check_real_x, check_uniforms
from ..reference import heads as _heads
from ..reference import made as _ref
from ..reference.made import ACTIVATIONS as _REF_ACT
from . import _nade_common
from . import masked_linear as _ml
from .masked_linear import ACTIVATIONS, masked_linear, prepare

HEADS = {"bernoulli": 0, "categorical": 1, "gaussian": 2, "affine": 3, "affine_raw": 4}
CPP_SAMPLE_DTYPES = (torch.float32, torch.float64)


def made_forward(x: Tensor, hidden_layers, output_layer, activation: str = "relu", direct_layer=None,
                 context: Optional[Tensor] = None, context_weights=None, backend: str = "cpp") -> Tensor:
    """Raw MADE outputs [B, D*P]; same arguments and result as ``reference.made.made_forward``.

    Between layers the hidden units stay in degree-sorted order (one layer's
    out_degrees are the next one's in_degrees, so both sort the same way): x is
    gathered once and the outputs scattered once, not at every layer. ``backend``:
    ``"cpp"``, ``"triton"``, ``"cuda"``, ``"reference"`` or ``"auto"``.
    """
    if torch.compiler.is_compiling():  # registry lookups stay out of the graph: auto is a constant
        if backend == "auto":
            backend = _nade_common._auto_backend("made", x.device.type, output_layer[0].dtype)
    else:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        backend = resolve_backend(check_backend_name(backend), "made", x.device, output_layer[0].dtype)
    if backend == "reference":
        return _ref.made_forward(x, hidden_layers, output_layer, activation, direct_layer, context, context_weights)
    layers = list(hidden_layers) + [output_layer]
    lead = x.shape[:-1]
    h, h_sorted = x.reshape(-1, x.shape[-1]), False
    for i, (w, b, din, dout) in enumerate(layers):
        last = i == len(layers) - 1
        sort_out = not last and not (i == 0 and context is not None) and _chains(dout, layers[i + 1][2])
        act = "none" if last or (i == 0 and context is not None) else activation
        h = _ml._masked_linear_op(h, w, b, din, dout, last, act, backend, h_sorted, sort_out,
                                  _ml.fresh_weights(h, w))
        if i == 0 and context is not None and not last:  # context joins before the activation
            h = _REF_ACT[activation](h + F.linear(context, context_weights[0]))
        h_sorted = sort_out
    out = h.reshape(*lead, h.shape[-1])
    if direct_layer is not None:
        w, din, dout = direct_layer
        out = out + masked_linear(x, w, None, din, dout, True, "none", backend)
    if context is not None:
        out = out + F.linear(context, context_weights[1])
    return out


def _chains(out_degrees: Tensor, next_in_degrees: Tensor) -> bool:
    """Whether a layer's sorted outputs can feed the next layer directly (same degrees)."""
    if torch.compiler.is_compiling():  # MADE sets both from one degree vector
        return True
    return out_degrees.shape == next_in_degrees.shape and torch.equal(out_degrees, next_in_degrees)


def fvsbn_logits(x: Tensor, weight: Tensor, bias: Tensor, degrees: Tensor, backend: str = "cpp") -> Tensor:
    """FVSBN logits [B, D]: one strictly masked linear layer (DESIGN.md section 1)."""
    return masked_linear(x, weight, bias, degrees, degrees, True, "none", backend)


def _sorted_bias(b: Optional[Tensor], p, like: Tensor) -> Tensor:
    if b is None:
        return like.new_zeros(p.perm_out.numel())
    return b.detach().index_select(0, p.perm_out).contiguous()


def _check_sample_args(output_layer, order, noise, head: str, K, context) -> None:
    """The arguments every sampler backend relies on (each error names its argument)."""
    if not isinstance(order, Tensor) or order.dim() != 1:
        raise ValueError(f"order must be a 1-D permutation tensor, got {getattr(order, 'shape', order)!r}")
    D = order.numel()
    trailing = (2,) if head == "gaussian" else ()
    if not isinstance(noise, Tensor):
        raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}")
    if not noise.dtype.is_floating_point:
        raise TypeError(f"noise must be a floating-point tensor, got dtype {noise.dtype}")
    if noise.dim() != 2 + len(trailing) or noise.shape[1] != D or tuple(noise.shape[2:]) != trailing:
        want = ", ".join(["n", f"D={D}"] + [str(t) for t in trailing])
        raise ValueError(f"noise must have shape [{want}] for head={head!r}, got {list(noise.shape)}")
    weight = output_layer[0]
    if noise.device != weight.device:
        raise ValueError(f"noise is on {noise.device} but the weights are on {weight.device}")
    if head in _ref.AFFINE_HEADS:
        check_real_x(noise, D, weight.device, noise.dtype, name="noise")  # z: finite
    else:
        check_uniforms(noise, noise.shape[0], D, trailing, weight.device, noise.dtype, name="noise")
    if head == "categorical" and (K is None or int(K) < 2):
        raise ValueError(f"K must be an int >= 2 for head='categorical', got {K!r}")
    if head == "gaussian" and (K is None or int(K) < 1):
        raise ValueError(f"K must be an int >= 1 for head='gaussian', got {K!r}")
    if head in _ref.AFFINE_HEADS and K not in (None, 1):
        raise ValueError(f"K must be None or 1 for head={head!r} (one Gaussian per dimension), got {K!r}")
    if context is not None and (not isinstance(context, Tensor) or context.dim() != 2
                                or context.shape[0] != noise.shape[0] or context.device != weight.device):
        raise ValueError(f"context must be a [n={noise.shape[0]}, context_dim] tensor on {weight.device}, "
                         f"got {getattr(context, 'shape', context)!r}")


def _prepare_for(backend: str):
    """The degree-sorted weights each sampler reads: masked blocks (cpp) or unmasked sorted
    weights (triton, cuda: they read only the reachable prefix of each row)."""
    if backend == "cpp":
        return lambda w, din, dout, strict: prepare(w, din, dout, strict)
    if backend == "triton":
        return _ml.prepare_triton
    return lambda w, din, dout, strict: _ml.prepare_sorted(w, din, dout)


def _triton_sampler():
    from ..kernels import made_sample_triton  # imports triton: only when the backend is used
    return made_sample_triton


def _cuda_sampler():
    ext = _ml._cuda()  # the CUDA extension, or why it is unavailable
    if not hasattr(ext, "made_sample"):
        raise RuntimeError("made_sample backend 'cuda' is unavailable: the CUDA extension has no made_sample "
                           "kernel; rebuild it")
    return ext


@torch.no_grad()
def made_sample(hidden_layers: Sequence, output_layer, order: Tensor, noise: Tensor, head: str = "bernoulli",
                K: Optional[int] = None, activation: str = "relu", direct_layer=None,
                context: Optional[Tensor] = None, context_weights=None, backend: str = "cpp"):
    """Draw ``n = noise.shape[0]`` samples in one pass over the weights; returns (x [n, D], log p(x) [n]).

    ``noise``: uniforms ``u [n, D]`` (bernoulli, categorical), ``[n, D, 2]``
    (gaussian mixture of K), or ``z [n, D]`` for ``head="affine"`` (the Gaussian
    K=1 inverse ``x_d = mu_d + exp(s_d) z_d``, ``s`` the soft-clipped log sigma
    ``reference.made.bounded_log_sigma``; ``"affine_raw"``: the raw log sigma; the
    second result is then ``log|det dx/dz| = sum s``). Categorical x is int64. The degrees must be MADE's
    (input degree of dimension ``order[t]`` is t+1). ``backend``: ``"cpp"``
    (csrc/made_cpu.cpp, CPU tensors), ``"triton"`` (one launch,
    kernels/made_sample_triton.py), ``"cuda"`` (one launch, csrc/made_cuda.cu),
    ``"reference"`` (D forward passes, ``reference.made.made_sample``) or ``"auto"``.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {tuple(HEADS)}, got {head!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    _check_sample_args(output_layer, order, noise, head, K, context)
    weight = output_layer[0]
    backend = resolve_backend(check_backend_name(backend), "made_sample", weight.device, weight.dtype)
    if backend == "reference":
        return _ref.made_sample(hidden_layers, output_layer, order, noise, head, K, activation, direct_layer,
                                context, context_weights)
    if backend == "cpp":
        ext = _ml._cpp()
        for name, t in (("the weights", weight), ("noise", noise)):
            if t.dtype not in CPP_SAMPLE_DTYPES:
                raise TypeError(f"the cpp MADE sampler takes float32/float64 weights and noise, got {name} in "
                                f"{t.dtype} (backend='auto' picks the reference for {t.dtype})")
    D = noise.shape[1]
    kin = K if head == "categorical" else 1
    dev = output_layer[0].device
    order_l = order.to(device=dev, dtype=torch.long)
    prep = _prepare_for(backend)
    preps = [prep(w, din, dout, False) for (w, _, din, dout) in hidden_layers]
    w, b, din, dout = output_layer
    p_out = prep(w, din, dout, True)
    # The samplers walk sorted units; check the sorted orders chain up as MADE's degrees imply.
    expect_in = (order_l[:, None] * kin + torch.arange(kin, device=dev)).reshape(-1)
    first = preps[0] if preps else p_out
    if not torch.equal(first.perm_in, expect_in):
        raise ValueError("the first layer's in_degrees must be MADE's input degrees for `order`")
    chain = preps + [p_out]
    for a, c in zip(chain[:-1], chain[1:]):
        if not torch.equal(a.perm_out, c.perm_in):
            raise ValueError("consecutive layers' degrees disagree (out_degrees of one != in_degrees of the next)")
    P = p_out.perm_out.numel() // D
    expect_out = (order_l[:, None] * P + torch.arange(P, device=dev)).reshape(-1)
    if not torch.equal(p_out.perm_out, expect_out):
        raise ValueError("the output layer's out_degrees must be MADE's output degrees for `order`")
    weights = [p.w_sorted for p in chain]
    biases = [_sorted_bias(layer[1], p, weights[i]) for i, (layer, p)
              in enumerate(zip(list(hidden_layers) + [output_layer], chain))]
    degrees = [layer[3].to(dev).index_select(0, p.perm_out).contiguous() for layer, p in zip(hidden_layers, preps)]
    direct = None
    if direct_layer is not None:
        wd, dind, doutd = direct_layer
        p_direct = prep(wd, dind, doutd, True)
        if not (torch.equal(p_direct.perm_in, expect_in) and torch.equal(p_direct.perm_out, expect_out)):
            raise ValueError("the direct layer's degrees must be MADE's input and output degrees for `order`")
        direct = p_direct.w_sorted
    ctx_h = ctx_o = None
    if context is not None:
        if preps:
            ctx_h = F.linear(context, context_weights[0]).index_select(1, preps[0].perm_out).contiguous()
        ctx_o = F.linear(context, context_weights[1]).index_select(1, p_out.perm_out).contiguous()
    if backend == "cuda":  # the CUDA kernel computes in the sorted weights' dtype (fp32 for fp16/bf16 models)
        ct = weights[0].dtype
        biases = [bb.to(ct) for bb in biases]
        direct, ctx_h, ctx_o = (None if t is None else t.to(ct) for t in (direct, ctx_h, ctx_o))
        noise = noise.to(ct)
    args = (weights, biases, degrees, direct, order_l.contiguous(), ctx_h, ctx_o, noise.contiguous())
    k = 1 if K is None else K
    if backend == "cpp":
        return ext.made_sample(*args, HEADS[head], k, ACTIVATIONS[activation])
    if backend == "cuda":
        x, lp = _cuda_sampler().made_sample(*args, HEADS[head], k, ACTIVATIONS[activation])
    else:
        z = None
        if head == "gaussian":  # Phi^-1 exactly as reference/heads.py computes it
            z = torch.special.ndtri(noise[..., 1].clamp(_heads.U_EPS, 1 - _heads.U_EPS)).contiguous()
        x, lp = _triton_sampler().made_sample(*args, head, k, ACTIVATIONS[activation], z)
    dtype = output_layer[0].dtype
    return (x if x.dtype == torch.long else x.to(dtype)), lp.to(dtype)


def fvsbn_sample(weight: Tensor, bias: Tensor, degrees: Tensor, order: Tensor, u: Tensor, backend: str = "cpp"):
    """FVSBN samples from uniforms ``u [n, D]`` in one pass: (x [n, D], log p(x) [n])."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    check_uniforms(u, getattr(u, "shape", [0])[0], weight.shape[-1], (), weight.device, weight.dtype)
    return made_sample([], (weight, bias, degrees, degrees), order, u, "bernoulli", backend=backend)


# "made" / "fvsbn": the models (forward through masked_linear, sampling and the flow's
# inverse through made_sample); "made_sample": the one-pass samplers alone.
_cpp = _ext.get_ext()
if _cpp is not None and hasattr(_cpp, "made_sample") and hasattr(_cpp, "masked_linear_forward"):
    register_kernel("made", "cpp")
    register_kernel("fvsbn", "cpp")
    register_kernel("made_sample", "cpp", CPP_SAMPLE_DTYPES)
_cuda_ext = _ext.get_cuda_ext()
if _cuda_ext is not None and hasattr(_cuda_ext, "made_sample") and hasattr(_cuda_ext, "masked_linear_forward"):
    for _op in ("made", "fvsbn", "made_sample"):
        register_kernel(_op, "cuda")
if importlib.util.find_spec("triton") is not None:  # kernels imported at first use
    for _op in ("made", "fvsbn", "made_sample"):
        register_kernel(_op, "triton")
