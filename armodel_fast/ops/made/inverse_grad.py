"""The adjoint of MADE's affine inverse in one reverse sweep (docs/DESIGN.md section 4).

The inverse ``x = G(x) = mu(x) + exp(s(x)) * z`` is solved in one pass over the weights
(the one-pass samplers). Its gradient needs ``w`` with ``w = v + (dG/dx)^T w`` (implicit
differentiation: ``w^T = v^T (I - dG/dx)^{-1}``). ``dG/dx`` is strictly triangular in the
order, so ``w`` follows by back-substitution, and that back-substitution is the transpose of
the one-pass sampler: walking the degrees from D down to 1, a hidden unit of degree k is
complete once every output of degree > k is, and dimension ``order[k-1]`` once every unit
of degree >= k is. Each unit pushes ``delta @ W`` into the units it reads, so the sweep
does the work of one backward pass through the masked network (in slices), instead of
the up to D backward passes of iterating ``w <- v + (dG/dx)^T w``.

Plain torch (any device, any dtype); the activations are recomputed from x in
degree-sorted coordinates, where each degree's units are one contiguous slice and the
inputs each unit reads are a prefix.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ...reference.made import LOG_SCALE_BOUND
from ...reference.masked_linear import degree_mask

_ACT = {"relu": F.relu, "elu": F.elu, "tanh": torch.tanh, "none": lambda t: t}


def _act_derivative(activation: str, pre: Tensor, h: Tensor) -> Tensor:
    """d act / d pre at ``pre`` (``h = act(pre)``)."""
    if activation == "relu":
        return (pre > 0).to(pre.dtype)
    if activation == "elu":
        return torch.where(pre > 0, torch.ones_like(pre), h + 1)
    if activation == "tanh":
        return 1 - h * h
    return torch.ones_like(pre)


def _sorted_layer(weight: Tensor, din: Tensor, dout: Tensor, strict: bool):
    """(masked weight in degree-sorted rows and columns, sorted out degrees, perm_out, perm_in, sorted in
    degrees), with the same stable sort as every backend."""
    dev = weight.device
    din_s, perm_in = torch.sort(din.to(dev), stable=True)
    dout_s, perm_out = torch.sort(dout.to(dev), stable=True)
    w = weight.detach().index_select(0, perm_out).index_select(1, perm_in)
    w = w * degree_mask(din_s, dout_s, strict, w.dtype)
    return w, dout_s, perm_out, perm_in, din_s


def _slices(degrees_sorted: Tensor, top: int) -> List[Tuple[int, int]]:
    """[k] -> (begin, end) of the units of degree k in sorted order, k = 0..top."""
    ks = torch.arange(top + 2, device=degrees_sorted.device)
    bounds = torch.searchsorted(degrees_sorted, ks).tolist()
    return [(bounds[k], bounds[k + 1]) for k in range(top + 1)]


def _reach(in_sorted: Tensor, top: int, strict: bool) -> List[int]:
    """[k] -> how many sorted inputs a unit of degree k reads (a prefix), k = 0..top."""
    ks = torch.arange(top + 1, device=in_sorted.device)
    return torch.searchsorted(in_sorted, ks, right=not strict).tolist()


@torch.no_grad()
def affine_inverse_adjoint(hidden_layers: Sequence, output_layer, direct_layer, order: Tensor, x: Tensor,
                           z: Tensor, v: Tensor, activation: str, clip: bool,
                           ctx_hidden: Optional[Tensor] = None, ctx_out: Optional[Tensor] = None) -> Tensor:
    """``w`` [B, D] with ``w = v + (dG/dx)^T w`` at the inverse's solution ``x`` [B, D].

    Layers as :func:`armodel_fast.ops.made.made_sample` takes them (affine head: 3 outputs per
    dimension, logit/mu/log sigma); ``ctx_hidden`` [B, H1] / ``ctx_out`` [B, 3D]: the context's
    contributions to the first hidden layer's and the output's pre-activations; ``clip``:
    the soft-clipped log sigma (head ``"affine"``) or the raw one (``"affine_raw"``).
    """
    D = order.numel()
    layers = [(*_sorted_layer(w, din, dout, False), b) for w, b, din, dout in hidden_layers]
    w_out, dout_out, perm_o, perm_x, din_out = _sorted_layer(output_layer[0], output_layer[2], output_layer[3], True)
    perm_x = layers[0][3] if layers else perm_x  # sorted input position t holds dimension order[t]
    xs = x.index_select(1, perm_x)
    # Forward in sorted coordinates: the derivative of each hidden unit, the output's head factor.
    h, derivs = xs, []
    for i, (w, _, p_out, _, _, b) in enumerate(layers):
        pre = h @ w.T
        if b is not None:
            pre = pre + b.detach().index_select(0, p_out)
        if i == 0 and ctx_hidden is not None:
            pre = pre + ctx_hidden.detach().index_select(1, p_out)
        h = _ACT[activation](pre)
        derivs.append(_act_derivative(activation, pre, h))
    raw = h @ w_out.T
    if output_layer[1] is not None:
        raw = raw + output_layer[1].detach().index_select(0, perm_o)
    if direct_layer is not None:
        w_dir, _, perm_do, _, din_dir = _sorted_layer(*direct_layer, True)
        raw = raw + xs @ w_dir.T  # direct rows sort like the output's (same degrees)
    if ctx_out is not None:
        raw = raw + ctx_out.detach().index_select(1, perm_o)
    ls_raw = raw[:, 2::3]  # sorted rows of degree k: 3(k-1) + (logit, mu, log sigma)
    if clip:  # s = r / (1 + |r| / c): ds/dr = 1 / (1 + |r| / c)^2
        s = ls_raw / (1 + ls_raw.abs() / LOG_SCALE_BOUND)
        ds = (1 + ls_raw.abs() / LOG_SCALE_BOUND).reciprocal().square()
    else:
        s, ds = ls_raw, torch.ones_like(ls_raw)
    head = torch.exp(s) * z.index_select(1, perm_x) * ds  # dG_k / d(log sigma raw)_k

    top = max([D] + [int(lay[1][-1]) for lay in layers if lay[1].numel()])
    unit_slices = [_slices(lay[1], top) for lay in layers]
    reaches = [_reach(lay[4], top, False) for lay in layers]
    out_reach = _reach(din_out, top, True)
    dir_reach = _reach(din_dir, top, True) if direct_layer is not None else None
    acc = [torch.zeros_like(d) for d in derivs]  # d loss / d h of each hidden layer, being summed
    acc_x = torch.zeros_like(xs)
    vs = v.index_select(1, perm_x)
    ws = torch.empty_like(xs)
    below_out = acc[-1] if layers else acc_x
    for k in range(top, 0, -1):
        # Hidden units of degree k: complete (every output of degree > k has pushed), top layer first.
        for i in range(len(layers) - 1, -1, -1):
            b0, b1 = unit_slices[i][k]
            if b0 == b1:
                continue
            delta = acc[i][:, b0:b1] * derivs[i][:, b0:b1]
            r = reaches[i][k]
            if r:
                (acc[i - 1] if i else acc_x)[:, :r].addmm_(delta, layers[i][0][b0:b1, :r])
        if k > D:
            continue
        # Dimension order[k-1]: complete; its output rows (mu, log sigma) push into what they read.
        wk = vs[:, k - 1] + acc_x[:, k - 1]
        ws[:, k - 1] = wk
        coef = torch.stack((wk, wk * head[:, k - 1]), 1)  # [B, 2]: d/d mu_k, d/d raw log sigma_k
        rows = slice(3 * (k - 1) + 1, 3 * k)
        r = out_reach[k]
        if r:
            below_out[:, :r].addmm_(coef, w_out[rows, :r])
        if dir_reach is not None and dir_reach[k]:
            acc_x[:, :dir_reach[k]].addmm_(coef, w_dir[rows, :dir_reach[k]])
    w = torch.empty_like(ws)
    w[:, perm_x] = ws
    return w
