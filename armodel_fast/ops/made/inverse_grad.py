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

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._validate import cpu_extension
from ...reference.made import ACT_IN, ACT_OUT, ACTIVATIONS, LOG_SCALE_BOUND, SKIP
from ...reference.masked_linear import degree_mask


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


def _bounds(degrees_sorted: Tensor, top: int) -> Tensor:
    """[top + 2] int64 (CPU): the units of degree k are ``[b[k], b[k + 1])`` in sorted order, k = 0..top."""
    ks = torch.arange(top + 2, device=degrees_sorted.device)
    return torch.searchsorted(degrees_sorted, ks).cpu()


def _reach(in_sorted: Tensor, top: int, strict: bool) -> Tensor:
    """[top + 1] int64 (CPU): how many sorted inputs a unit of degree k reads (a prefix), k = 0..top."""
    ks = torch.arange(top + 1, device=in_sorted.device)
    return torch.searchsorted(in_sorted, ks, right=not strict).cpu()


def _no_layers(width: int) -> Tensor:
    return torch.zeros(0, width, dtype=torch.long)


def _sweep(weights, act_in, skip, unit_bounds, reaches, acc, acc_act, in_derivs, derivs, deltas, acc_x, c_out, head,
           gl_ds, w_out, out_reach, w_dir, dir_reach, D: int, top: int) -> None:
    """The reverse sweep over the degrees, in place on ``acc``, ``acc_act``, ``deltas``, ``acc_x`` and
    ``c_out``: ``w = gx + d/dx <c_out, raw>`` with ``c_out`` the outputs' cotangent, which depends on
    w (mu rows: w_k; log sigma rows: w_k head_k + gl ds_k). The extension's ``made_inverse_sweep``
    runs the same steps on the CPU; this is it on other devices and without the extension."""
    bounds, reach, out_reach = unit_bounds.tolist(), reaches.tolist(), out_reach.tolist()
    dir_reach = None if dir_reach is None else dir_reach.tolist()
    below_out = acc[-1] if weights else acc_x
    for k in range(top, 0, -1):
        for i in range(len(weights) - 1, -1, -1):  # hidden units of degree k, top layer first
            b0, b1 = bounds[i][k], bounds[i][k + 1]
            if b0 == b1:
                continue
            g = acc[i][:, b0:b1]
            if acc_act[i] is not None:  # read through the activation by layer i+1
                g = g + acc_act[i][:, b0:b1] * in_derivs[i + 1][:, b0:b1]
            delta = g * derivs[i][:, b0:b1] if derivs[i] is not None else g
            deltas[i][:, b0:b1] = delta
            if skip[i]:  # the block's input (layer i-2, same units) was added unchanged
                acc[i - 2][:, b0:b1] += delta
            r = reach[i][k]
            if r:
                below = acc_x if i == 0 else (acc_act[i - 1] if act_in[i] else acc[i - 1])
                below[:, :r].addmm_(delta, weights[i][b0:b1, :r])
        if k > D:
            continue
        wk = acc_x[:, k - 1]  # dimension order[k-1]: complete
        coef = c_out[:, 2 * (k - 1):2 * k]
        coef[:, 0] = wk
        coef[:, 1] = wk * head[:, k - 1] + gl_ds[:, k - 1]
        if out_reach[k]:
            below_out[:, :out_reach[k]].addmm_(coef, w_out[2 * (k - 1):2 * k, :out_reach[k]])
        if dir_reach is not None and dir_reach[k]:
            acc_x[:, :dir_reach[k]].addmm_(coef, w_dir[2 * (k - 1):2 * k, :dir_reach[k]])


def _unsort(t_sorted: Tensor, perm_rows: Optional[Tensor], perm_cols: Optional[Tensor]) -> Tensor:
    """The caller's layout of a tensor in sorted rows / columns (None: that axis is not sorted)."""
    out = t_sorted
    if perm_cols is not None:
        out = torch.empty_like(out).index_copy_(out.dim() - 1, perm_cols, out)
    if perm_rows is not None:
        out = torch.empty_like(out).index_copy_(0, perm_rows, out)
    return out


@torch.no_grad()
def affine_inverse_backward(hidden_layers: Sequence, output_layer, direct_layer, x: Tensor, z: Tensor,
                            gx: Tensor, gl: Tensor, activation: str, clip: bool,
                            context: Optional[Tensor] = None, context_weights=None, program=None) -> dict:
    """Gradients of ``(x, logdet) = inverse(z)`` for upstream ``gx`` [B, D], ``gl`` [B], at the
    solution ``x`` [B, D]: ``{"z", "context", "weights", "biases", "direct", "context_weights"}``
    (lists follow the layers: hidden then output; None where there is no such input).

    Layers as :func:`armodel_fast.ops.made.made_sample` takes them (affine head: 2 outputs per
    dimension, mu/log sigma; context through ``context_weights = (Wc_hidden, Wc_out)``);
    ``clip``: the soft-clipped log sigma (head ``"affine"``) or the raw one (``"affine_raw"``).
    ``program``: the hidden layers' ACT_OUT / ACT_IN / SKIP flags (None: ACT_OUT each).
    """
    D = x.shape[1]
    flags = [ACT_OUT] * len(hidden_layers) if program is None else list(program)
    act = ACTIVATIONS[activation]
    layers = [(*_sorted_layer(w, din, dout, False), b) for w, b, din, dout in hidden_layers]
    w_out, dout_out, perm_o, perm_h, din_out = _sorted_layer(output_layer[0], output_layer[2], output_layer[3], True)
    perm_x = layers[0][3] if layers else perm_h  # sorted input position t holds dimension order[t]
    xs = x.detach().index_select(1, perm_x)
    ctx = None if context is None else context.detach()
    # Forward in sorted coordinates: each layer's input, each hidden unit's derivative, the head.
    # A residual program (reference.made.made_forward) keeps every layer of a block on the same
    # degrees, hence the same sorted order: skips and activated inputs are elementwise there.
    h, h_before, inputs, derivs, in_derivs = xs, xs, [], [], []
    for i, (w, _, p_out, _, _, b) in enumerate(layers):
        f = flags[i]
        inp = act(h) if f & ACT_IN else h
        in_derivs.append(_act_derivative(activation, h, inp) if f & ACT_IN else None)
        inputs.append(inp)
        pre = inp @ w.T
        if b is not None:
            pre = pre + b.detach().index_select(0, p_out)
        if i == 0 and ctx is not None:
            pre = pre + F.linear(ctx, context_weights[0].detach()).index_select(1, p_out)
        if f & SKIP:
            pre = pre + h_before
        out = act(pre) if f & ACT_OUT else pre
        derivs.append(_act_derivative(activation, pre, out) if f & ACT_OUT else None)
        h, h_before = out, h
    inputs.append(h)
    raw = h @ w_out.T
    if output_layer[1] is not None:
        raw = raw + output_layer[1].detach().index_select(0, perm_o)
    w_dir = din_dir = None
    if direct_layer is not None:
        w_dir, _, _, _, din_dir = _sorted_layer(*direct_layer, True)
        raw = raw + xs @ w_dir.T  # direct rows sort like the output's (same degrees)
    if ctx is not None:
        raw = raw + F.linear(ctx, context_weights[1].detach()).index_select(1, perm_o)
    ls_raw = raw[:, 1::2]  # sorted rows of degree k: 2(k-1) + (mu, log sigma)
    if clip:  # s = r / (1 + |r| / c): ds/dr = 1 / (1 + |r| / c)^2
        s = ls_raw / (1 + ls_raw.abs() / LOG_SCALE_BOUND)
        ds = (1 + ls_raw.abs() / LOG_SCALE_BOUND).reciprocal().square()
    else:
        s, ds = ls_raw, torch.ones_like(ls_raw)
    sigma = torch.exp(s)
    head = sigma * z.detach().index_select(1, perm_x) * ds  # dG_k / d(raw log sigma)_k
    gl_ds = gl[:, None] * ds  # d(gl * logdet) / d(raw log sigma)

    # The reverse sweep: w = gx + d/dx <c_out, raw> with c_out the outputs' cotangent, which
    # depends on w (mu rows: w_k; log sigma rows: w_k head_k + gl ds_k); deltas of every unit.
    top = max([D] + [int(lay[1][-1]) for lay in layers if lay[1].numel()])
    unit_bounds = torch.stack([_bounds(lay[1], top) for lay in layers]) if layers else _no_layers(top + 2)
    reaches = torch.stack([_reach(lay[4], top, False) for lay in layers]) if layers else _no_layers(top + 1)
    out_reach = _reach(din_out, top, True)
    dir_reach = _reach(din_dir, top, True) if direct_layer is not None else None
    acc = [torch.zeros_like(inp) for inp in inputs[1:]]  # d loss / d h (each layer's output), as units complete
    # d loss / d act(h) of the layers an ACT_IN layer reads (None elsewhere)
    acc_act = [torch.zeros_like(a) if i + 1 < len(layers) and flags[i + 1] & ACT_IN else None
               for i, a in enumerate(acc)]
    deltas = [torch.zeros_like(a) for a in acc]  # d loss / d pre-activation
    acc_x = gx.index_select(1, perm_x).clone()
    c_out = raw.new_zeros(raw.shape)
    sweep = cpu_extension("made_inverse_sweep", x) or _sweep
    sweep([lay[0] for lay in layers], [bool(f & ACT_IN) for f in flags], [bool(f & SKIP) for f in flags],
          unit_bounds, reaches, acc, acc_act, in_derivs, derivs, deltas, acc_x, c_out, head, gl_ds, w_out, out_reach,
          w_dir, dir_reach, D, top)
    ws = acc_x

    # Parameter gradients at fixed x: the masked products of each layer, back in the caller's layout.
    grads = {"z": _unsort(ws * sigma, None, perm_x), "context": None, "direct": None, "context_weights": None}
    masked_grad = lambda cot, inp, din_s, dout_s, strict: (cot.T @ inp) * degree_mask(din_s, dout_s, strict, inp.dtype)  # noqa: E731
    grads["weights"] = [_unsort(masked_grad(d, inp, lay[4], lay[1], False), lay[2], lay[3])
                        for d, inp, lay in zip(deltas, inputs, layers)]
    grads["weights"].append(_unsort(masked_grad(c_out, inputs[-1], din_out, dout_out, True), perm_o, perm_h))
    grads["biases"] = [_unsort(d.sum(0), lay[2], None) for d, lay in zip(deltas, layers)]
    grads["biases"].append(_unsort(c_out.sum(0), perm_o, None))
    if direct_layer is not None:
        grads["direct"] = _unsort(masked_grad(c_out, xs, din_dir, dout_out, True), perm_o, perm_x)
    if ctx is not None:
        c_user = _unsort(c_out, None, perm_o)
        grads["context"] = c_user @ context_weights[1].detach()
        wc_h = None
        if layers:
            d1 = _unsort(deltas[0], None, layers[0][2])
            grads["context"] = grads["context"] + d1 @ context_weights[0].detach()
            wc_h = d1.T @ ctx
        grads["context_weights"] = [wc_h, c_user.T @ ctx]
    return grads
