"""MADE and FVSBN forward passes through the fast masked linear layer (docs/DESIGN.md sections 1 and 4).

The layer tuples are those of :func:`armodel_fast.reference.made.made_forward`:
hidden ``(weight, bias, in_degrees, out_degrees)``, output the same (strict),
direct ``(weight, in_degrees, out_degrees)`` (strict, no bias), and
``context_weights = (Wc_hidden, Wc_out)``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ... import dispatch
from ..._validate import check_tensor
from ...reference import made as _ref
from ...reference.made import ACTIVATIONS as _REF_ACT
from ..masked_linear import fresh_weights, masked_linear, masked_linear_call
from ..masked_linear.cache import degree_mask_for
from .launchers import FAST_BACKENDS


def made_forward(x: Tensor, hidden_layers, output_layer, activation: str = "relu", direct_layer=None,
                 context: Optional[Tensor] = None, context_weights=None, backend: str = "cpp",
                 program=None) -> Tensor:
    """Raw MADE outputs [B, D*P]; same arguments and result as ``reference.made.made_forward``
    (``program``: the hidden layers' flags of a residual MADE, ``reference.made.layer_program``).

    ``backend``: ``"cpp"``, ``"triton"``, ``"cuda"``, ``"reference"`` or ``"auto"``.
    """
    if not torch.compiler.is_compiling():
        check_tensor("x", x)
        check_program(program, hidden_layers)
    backend = dispatch.resolve_backend(backend, "made", x.device, output_layer[0].dtype)
    return dispatch.launcher("made", "forward", backend)(x, hidden_layers, output_layer, activation, direct_layer,
                                                         context, context_weights, backend, program)


def check_program(program, hidden_layers) -> None:
    """``program`` is None or one flag set per hidden layer that the layers can run: a SKIP
    layer adds the input of the layer before it (same units and degrees), an ACT_IN layer
    reads a hidden layer."""
    if program is None:
        return
    if not isinstance(program, (list, tuple, range)) or len(program) != len(hidden_layers):
        raise ValueError(f"program must be a list or tuple of one flag set per hidden layer ({len(hidden_layers)}), "
                         f"got {program!r}")
    for i, f in enumerate(program):
        if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f <= _ref.ACT_OUT | _ref.ACT_IN | _ref.SKIP:
            raise ValueError(f"program[{i}] must be an int of ACT_OUT | ACT_IN | SKIP flags, got {f!r}")
        if f & _ref.ACT_IN and i == 0:
            raise ValueError("program[0] cannot have ACT_IN (the first layer reads the inputs)")
        if f & _ref.SKIP:
            if i < 2:
                raise ValueError(f"program[{i}] has SKIP but a skip adds the output of layer i-2: i must be >= 2")
            added, into = hidden_layers[i - 2][3], hidden_layers[i][3]
            if added.shape != into.shape or not torch.equal(added.to(into.device), into):
                raise ValueError(f"program[{i}] has SKIP: hidden layer {i}'s out_degrees must equal hidden layer "
                                 f"{i - 2}'s (the skip adds unit to unit)")


def _chained_forward(x, hidden_layers, output_layer, activation, direct_layer, context, context_weights, backend,
                     program=None):
    """Every layer by the masked-linear custom op of ``backend``. Between layers the hidden
    units stay in degree-sorted order (one layer's out_degrees are the next one's
    in_degrees, so both sort the same way): x is gathered once and the outputs scattered
    once, not at every layer. A residual program runs in the caller's order."""
    if program is not None:
        return _residual_forward(x, hidden_layers, output_layer, activation, direct_layer, context,
                                 context_weights, backend, program)
    layers = list(hidden_layers) + [output_layer]
    lead = x.shape[:-1]
    h, h_sorted = x.reshape(-1, x.shape[-1]), False
    for i, (w, b, din, dout) in enumerate(layers):
        last = i == len(layers) - 1
        sort_out = not last and not (i == 0 and context is not None) and _chains(dout, layers[i + 1][2])
        act = "none" if last or (i == 0 and context is not None) else activation
        h = masked_linear_call(h, w, b, din, dout, last, act, backend, h_sorted, sort_out, fresh_weights(h, w))
        if i == 0 and context is not None and not last:  # context joins before the activation
            h = _REF_ACT[activation](h + F.linear(context, context_weights[0]))
        h_sorted = sort_out
    return _direct_and_context(h.reshape(*lead, h.shape[-1]), x, direct_layer, context, context_weights, backend)


def _cpp_forward(x, hidden_layers, output_layer, activation, direct_layer, context, context_weights, backend,
                 program=None):
    """The cpp backend: a plain MADE's training forward as one autograd node where it applies
    (``masked_linear/chain.py``), else the chained layers."""
    if program is None and direct_layer is None and context is None:
        one_node = dispatch.optional_launcher("masked_linear", "train_chain", backend)
        layers = [(*layer, False, activation) for layer in hidden_layers] + [(*output_layer, True, "none")]
        raw = one_node(x, layers) if one_node is not None else None
        if raw is not None:
            return raw
    return _chained_forward(x, hidden_layers, output_layer, activation, direct_layer, context, context_weights,
                            backend, program)


def _residual_forward(x, hidden_layers, output_layer, activation, direct_layer, context, context_weights, backend,
                      program):
    """``reference.made.made_forward``'s program with each layer by the masked-linear op of ``backend``
    (the activation fused into a layer without a skip)."""
    act = _REF_ACT[activation]
    h = h_before = x
    for i, ((w, b, din, dout), flags) in enumerate(zip(hidden_layers, program)):
        fused = flags & _ref.ACT_OUT and not flags & _ref.SKIP and not (i == 0 and context is not None)
        pre = masked_linear(act(h) if flags & _ref.ACT_IN else h, w, b, din, dout, False,
                            activation if fused else "none", backend)
        if i == 0 and context is not None:
            pre = pre + F.linear(context, context_weights[0])
        if flags & _ref.SKIP:
            pre = pre + h_before
        h, h_before = (act(pre) if flags & _ref.ACT_OUT and not fused else pre), h
    w, b, din, dout = output_layer
    out = masked_linear(h, w, b, din, dout, True, "none", backend)
    return _direct_and_context(out, x, direct_layer, context, context_weights, backend)


def _direct_and_context(out, x, direct_layer, context, context_weights, backend):
    """The output layer's result plus the direct (strict masked) and context terms, in the reference's order."""
    if direct_layer is not None:
        w, din, dout = direct_layer
        out = out + masked_linear(x, w, None, din, dout, True, "none", backend)
    if context is not None:
        out = out + F.linear(context, context_weights[1])
    return out


@dispatch.register("made", "forward", "reference")
def _reference_forward(x, hidden_layers, output_layer, activation, direct_layer, context, context_weights, backend,
                       program=None):
    return _ref.made_forward(x, hidden_layers, output_layer, activation, direct_layer, context, context_weights,
                             mask_of=degree_mask_for, program=program)


def _chains(out_degrees: Tensor, next_in_degrees: Tensor) -> bool:
    """Whether a layer's sorted outputs can feed the next layer directly (same degrees)."""
    if torch.compiler.is_compiling():  # MADE sets both from one degree vector
        return True
    return out_degrees.shape == next_in_degrees.shape and torch.equal(out_degrees, next_in_degrees)


def fvsbn_logits(x: Tensor, weight: Tensor, bias: Tensor, degrees: Tensor, backend: str = "cpp") -> Tensor:
    """FVSBN logits [B, D]: one strictly masked linear layer (docs/DESIGN.md section 1)."""
    return masked_linear(x, weight, bias, degrees, degrees, True, "none", backend)


dispatch.register("made", "forward", "cpp", requires=FAST_BACKENDS["cpp"])(_cpp_forward)
for _backend, _needs in FAST_BACKENDS.items():
    if _backend != "cpp":
        dispatch.register("made", "forward", _backend, requires=_needs)(_chained_forward)
    dispatch.register("fvsbn", "forward", _backend, requires=_needs)(fvsbn_logits)
