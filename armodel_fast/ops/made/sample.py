"""One-pass MADE / FVSBN sampling (docs/DESIGN.md sections 1 and 4): validate once, then dispatch.

:func:`made_sample` / :func:`fvsbn_sample` run all D steps in one call that computes
every hidden unit once (the launchers in ``launchers.py``), from caller-supplied
noise, sample for sample equal to the D-pass reference sampler
(``reference.made.made_sample``, ``backend="reference"``); ``head="affine"`` runs
MADE's Gaussian (K=1) inverse the same way. Every check below runs for every
backend, the reference included.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ... import dispatch
from ..._validate import check_order, check_real_x, check_tensor, check_uniforms
from ...reference import made as _ref
from .._autograd import any_nonfinite
from ..masked_linear import ACTIVATIONS
from .forward import check_program
from .launchers import FAST_BACKENDS, HEADS


def _outputs_per_dim(head: str, K) -> int:
    return {"bernoulli": 1, "categorical": K, "gaussian": 3 * (K or 1), "affine": 2, "affine_raw": 2}[head]


def _check_noise_and_head(output_layer, D: int, noise, head: str, K) -> None:
    trailing = (2,) if head == "gaussian" else ()
    check_tensor("noise", noise)
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


def _check_layers(hidden_layers, output_layer, direct_layer, order: Tensor, head: str, K) -> None:
    """The layer sizes fit the head, and the degrees are MADE's for ``order``: the sorted
    unit orders the one-pass samplers walk chain up (the same stable degree sort as
    every backend's prepared weights)."""
    D, kin = order.numel(), (K if head == "categorical" else 1)
    P = _outputs_per_dim(head, K)
    layers = list(hidden_layers) + [output_layer]
    for i, layer in enumerate(layers):
        name = "the output layer" if i == len(layers) - 1 else f"hidden layer {i}"
        if not isinstance(layer, (tuple, list)) or len(layer) != 4 or not isinstance(layer[0], Tensor) \
                or layer[0].dim() != 2:
            raise TypeError(f"{name} must be a (weight [out, in], bias, in_degrees, out_degrees) tuple")
    sizes = [layers[0][0].shape[1]] + [w.shape[0] for w, *_ in layers]
    if sizes[0] != D * kin:
        raise ValueError(f"the first layer takes {sizes[0]} inputs but head={head!r} with D={D}"
                         f"{f', K={K}' if head == 'categorical' else ''} needs D*{kin}={D * kin}")
    if sizes[-1] != D * P:
        raise ValueError(f"the output layer has {sizes[-1]} units but head={head!r} with D={D}, K={K} needs "
                         f"D*{P}={D * P}")
    for i, (w, *_) in enumerate(layers[1:], 1):
        if w.shape[1] != sizes[i]:
            raise ValueError(f"layer {i} takes {w.shape[1]} inputs but the layer before has {sizes[i]} units")
    dev = output_layer[0].device
    order = order.to(dev)
    perm = lambda deg: torch.sort(deg.to(dev), stable=True).indices  # noqa: E731
    expect_in = (order[:, None] * kin + torch.arange(kin, device=dev)).reshape(-1)
    expect_out = (order[:, None] * P + torch.arange(P, device=dev)).reshape(-1)
    if not torch.equal(perm(layers[0][2]), expect_in):
        raise ValueError("the first layer's in_degrees must be MADE's input degrees for `order`")
    for a, c in zip(layers[:-1], layers[1:]):
        if not torch.equal(perm(a[3]), perm(c[2])):
            raise ValueError("consecutive layers' degrees disagree (out_degrees of one != in_degrees of the next)")
    if not torch.equal(perm(output_layer[3]), expect_out):
        raise ValueError("the output layer's out_degrees must be MADE's output degrees for `order`")
    if direct_layer is not None:
        wd, dind, doutd = direct_layer
        if tuple(wd.shape) != (D * P, D * kin) or not (torch.equal(perm(dind), expect_in)
                                                       and torch.equal(perm(doutd), expect_out)):
            raise ValueError("the direct layer's degrees must be MADE's input and output degrees for `order`")


def _check_context(context, context_weights, n: int, hidden_layers, output_layer) -> None:
    if context is None:
        return
    weight = output_layer[0]
    if not isinstance(context, Tensor) or context.dim() != 2 or context.shape[0] != n \
            or context.device != weight.device:
        raise ValueError(f"context must be a [n={n}, context_dim] tensor on {weight.device}, "
                         f"got {getattr(context, 'shape', context)!r}")
    C = context.shape[1]
    want = [(hidden_layers[0][0].shape[0] if hidden_layers else None, C), (weight.shape[0], C)]
    if not isinstance(context_weights, (tuple, list)) or len(context_weights) != 2:
        raise ValueError("context_weights must be (Wc_hidden [H1, context_dim], Wc_out [D*P, context_dim]) when "
                         f"context is given, got {type(context_weights).__name__}")
    for name, t, (rows, cols) in zip(("Wc_hidden", "Wc_out"), context_weights, want):
        if rows is None:  # no hidden layer: Wc_hidden is not used
            continue
        if not isinstance(t, Tensor) or tuple(t.shape) != (rows, cols):
            raise ValueError(f"context_weights {name} must be a [{rows}, {cols}] tensor, "
                             f"got {getattr(t, 'shape', t)!r}")


def _sorted_bias(b: Optional[Tensor], p, like: Tensor) -> Tensor:
    if b is None:
        return like.new_zeros(p.perm_out.numel())
    return b.detach().index_select(0, p.perm_out).contiguous()


def check_finite_parameters(hidden_layers, output_layer, direct_layer, context_weights) -> None:
    """Sampling needs finite weights and biases, on every backend: a NaN/inf parameter makes the
    reference's dense passes NaN wherever the mask multiplies it by 0, which the one-pass
    samplers (they skip masked-out connections) cannot reproduce sample for sample. One bit-test
    pass per tensor on the CPU (``any_nonfinite``: ``isfinite(t).all()`` cost 3x the sampling
    itself at D=784 [2000, 2000])."""
    named = [(f"hidden layer {i} {what}", t) for i, layer in enumerate(hidden_layers)
             for what, t in (("weight", layer[0]), ("bias", layer[1]))]
    named += [("the output layer weight", output_layer[0]), ("the output layer bias", output_layer[1])]
    if direct_layer is not None:
        named.append(("the direct layer weight", direct_layer[0]))
    if context_weights is not None:
        named += [(f"context_weights[{i}]", t) for i, t in enumerate(context_weights)]
    for name, t in named:
        if t is not None and t.numel() and any_nonfinite(t):
            raise ValueError(f"{name} holds NaN or inf: MADE/FVSBN sampling needs finite parameters "
                             "(log_prob and forward give the reference's NaN/inf pattern instead)")


@torch.no_grad()
def made_sample(hidden_layers: Sequence, output_layer, order: Tensor, noise: Tensor, head: str = "bernoulli",
                K: Optional[int] = None, activation: str = "relu", direct_layer=None,
                context: Optional[Tensor] = None, context_weights=None, backend: str = "cpp", program=None):
    """Draw ``n = noise.shape[0]`` samples in one pass over the weights; returns (x [n, D], log p(x) [n]).

    ``noise``: uniforms ``u [n, D]`` (bernoulli, categorical), ``[n, D, 2]``
    (gaussian mixture of K), or ``z [n, D]`` for ``head="affine"`` (the Gaussian
    K=1 inverse ``x_d = mu_d + exp(s_d) z_d``, the output layer's 2 rows per dimension being mu and
    the raw log sigma; ``s`` the soft-clipped log sigma
    ``reference.made.bounded_log_sigma``; ``"affine_raw"``: the raw log sigma; the second
    result is then ``log|det dx/dz| = sum s``). Categorical x is int64. The degrees must be MADE's
    (input degree of dimension ``order[t]`` is t+1). ``backend``: ``"cpp"``,
    ``"triton"``, ``"cuda"``, ``"reference"`` (D forward passes) or ``"auto"``. ``program``:
    the hidden layers' flags of a residual MADE (``reference.made.layer_program``; None: plain).
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {tuple(HEADS)}, got {head!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    if not isinstance(order, Tensor) or order.dim() != 1:
        raise ValueError(f"order must be a 1-D permutation tensor, got {getattr(order, 'shape', order)!r}")
    D = order.numel()
    order_cpu = check_order(order, D)
    _check_noise_and_head(output_layer, D, noise, head, K)
    _check_layers(hidden_layers, output_layer, direct_layer, order_cpu, head, K)
    _check_context(context, context_weights, noise.shape[0], hidden_layers, output_layer)
    check_program(program, hidden_layers)
    check_finite_parameters(hidden_layers, output_layer, direct_layer, context_weights)
    weight = output_layer[0]
    backend = dispatch.resolve_backend(backend, "made_sample", weight.device, weight.dtype)
    return dispatch.launcher("made_sample", "run", backend)(hidden_layers, output_layer, order, noise, head, K,
                                                             activation, direct_layer, context, context_weights,
                                                             backend, program)


@dispatch.register("made_sample", "run", "reference")
def _d_passes(hidden_layers, output_layer, order, noise, head, K, activation, direct_layer, context,
              context_weights, backend, program=None):
    """The reference: D forward passes (``reference.made.made_sample``)."""
    return _ref.made_sample(hidden_layers, output_layer, order, noise, head, K, activation, direct_layer,
                            context, context_weights, program)


def _one_pass(hidden_layers, output_layer, order, noise, head, K, activation, direct_layer, context,
              context_weights, backend, program=None):
    """The fast backends: ``backend``'s prepared weights, then its sampler in one call."""
    weight = output_layer[0]
    takes = dispatch.dtypes("made_sample", backend)
    for name, t in (("the weights", weight), ("noise", noise)):
        if takes is not None and t.dtype not in takes:
            raise TypeError(f"the {backend} MADE sampler takes {'/'.join(str(d)[6:] for d in takes)} weights and "
                            f"noise, got {name} in {t.dtype} (backend='auto' picks the reference for {t.dtype})")
    dev = weight.device
    prep = dispatch.launcher("made_sample", "prepare", backend)
    layers = list(hidden_layers) + [output_layer]
    chain = [prep(w, din, dout, i == len(layers) - 1) for i, (w, _, din, dout) in enumerate(layers)]
    weights = [p.w_sorted for p in chain]
    biases = [_sorted_bias(layer[1], p, weights[i]) for i, (layer, p) in enumerate(zip(layers, chain))]
    degrees = [layer[3].to(dev).index_select(0, p.perm_out).contiguous() for layer, p in zip(hidden_layers, chain)]
    direct = None if direct_layer is None else prep(*direct_layer, True).w_sorted
    ctx_h = ctx_o = None
    if context is not None:
        if hidden_layers:
            ctx_h = F.linear(context, context_weights[0]).index_select(1, chain[0].perm_out).contiguous()
        ctx_o = F.linear(context, context_weights[1]).index_select(1, chain[-1].perm_out).contiguous()
    x, lp = dispatch.launcher("made_sample", "sample", backend)(
        weights, biases, degrees, direct, order.to(dev, torch.long).contiguous(), ctx_h, ctx_o, noise.contiguous(),
        head, 1 if K is None else K, activation,
        [_ref.ACT_OUT] * len(hidden_layers) if program is None else [int(f) for f in program])
    return (x if x.dtype == torch.long else x.to(weight.dtype)), lp.to(weight.dtype)


for _backend in FAST_BACKENDS:
    dispatch.register("made_sample", "run", _backend)(_one_pass)


def fvsbn_sample(weight: Tensor, bias: Tensor, degrees: Tensor, order: Tensor, u: Tensor, backend: str = "cpp"):
    """FVSBN samples from uniforms ``u [n, D]`` in one pass: (x [n, D], log p(x) [n])."""
    check_tensor("weight", weight)
    check_uniforms(u, getattr(u, "shape", [0])[0], weight.shape[-1], (), weight.device, weight.dtype)
    return made_sample([], (weight, bias, degrees, degrees), order, u, "bernoulli", backend=backend)
