"""What MADE accepts from the flow libraries: hidden sizes, activations, residual blocks, batch
shapes; and the affine layer's old three-row state (loaded by dropping the logit rows).

* ``hidden``: an int (one layer) or a sequence of ints.
* ``activation``: a name (``"relu"``, ``"elu"``, ``"tanh"``, ``"none"``), a
  ``torch.nn`` module class or instance (``nn.ReLU``, ``nn.ELU()``, ...) or the
  function (``F.relu``, ``torch.tanh``): the fast kernels fuse these four only.
* ``residual``: None / False, ``"linear"`` (zuko), ``"preact"`` (nflows; ``True``).
* Inputs ``x [..., D]`` with any leading batch shape (``x [D]`` unbatched) and a
  context ``[..., C]`` broadcast against it (``c [C]`` with ``x [B, D]``): the
  model flattens both to ``[B, D]`` / ``[B, C]`` and restores the shape after.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import as_int
from ..reference.made import ACTIVATIONS, RESIDUAL

_BY_OBJECT = {nn.ReLU: "relu", nn.ELU: "elu", nn.Tanh: "tanh", nn.Identity: "none",
              F.relu: "relu", F.elu: "elu", torch.tanh: "tanh", F.tanh: "tanh", torch.relu: "relu"}


def check_hidden(hidden) -> list:
    """``hidden`` as a list of positive ints (an int is one hidden layer)."""
    if as_int(hidden) is not None:
        hidden = [hidden]
    if isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__iter__"):
        raise TypeError(f"hidden must be an int or a list of ints, e.g. hidden=[500, 500], got {hidden!r}")
    sizes = [as_int(h) for h in hidden]
    if any(h is None for h in sizes):
        raise TypeError(f"hidden must be an int or a list of ints, e.g. hidden=[500, 500], got {hidden!r}")
    hidden = sizes
    if len(hidden) == 0 or min(hidden) < 1:
        raise ValueError(f"hidden must be a non-empty list of positive sizes, got {hidden}")
    return hidden


def activation_name(activation) -> str:
    """The kernel name of ``activation`` (a name, an nn.Module class or instance, or a function)."""
    if isinstance(activation, str):
        if activation in ACTIVATIONS:
            return activation
    else:
        key = type(activation) if isinstance(activation, nn.Module) else activation
        try:
            name = _BY_OBJECT.get(key)
        except TypeError:  # unhashable
            name = None
        if isinstance(activation, nn.ELU) and float(activation.alpha) != 1.0:
            raise ValueError(f"activation nn.ELU(alpha={activation.alpha}) is not supported: the kernels fuse "
                             f"elu with alpha=1 (pass nn.ELU() or 'elu')")
        if name is not None:
            return name
    raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, nn.ReLU/nn.ELU/nn.Tanh/nn.Identity "
                     f"(class or instance) or F.relu/F.elu/torch.tanh, got {activation!r}")


def flatten_batch(x, context, D: int, context_dim: int, name: str = "x"):
    """``x [..., D]`` and ``context [..., C]`` (or None) -> (x [B, D], context [B, C], batch shape).

    The batch shape is the broadcast of both leading shapes; shapes are checked here
    (each error names the argument), values by the model's checks on the flat tensors.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[-1] != D:
        raise ValueError(f"{name} must have shape [B, {D}] (or any leading batch shape [..., {D}]), "
                         f"got {tuple(x.shape)}")
    lead = x.shape[:-1]
    if x.dim() == 2 and (context is None or not context_dim or not isinstance(context, torch.Tensor)
                         or (context.dim() == 2 and context.shape == (x.shape[0], context_dim))):
        return x, context, lead  # already flat: no view nodes in the autograd graph of every layer
    if context is not None and context_dim and isinstance(context, torch.Tensor):
        if context.dim() == 0 or context.shape[-1] != context_dim:
            batch = ", ".join(map(str, lead)) or "B"
            raise ValueError(f"context must have shape [{batch}, {context_dim}] (or [{context_dim}], or any batch "
                             f"shape broadcasting with {name}'s), got {tuple(context.shape)}")
        try:
            lead = torch.broadcast_shapes(lead, context.shape[:-1])
        except RuntimeError:
            raise ValueError(f"context's batch shape {tuple(context.shape[:-1])} does not broadcast with "
                             f"{name}'s {tuple(x.shape[:-1])}") from None
        context = context.expand(*lead, context_dim).reshape(-1, context_dim)
    x = x.expand(*lead, D).reshape(-1, D)
    return x, context, lead


def check_residual(residual):
    """``residual`` as ``None``, ``"linear"`` or ``"preact"`` (``True`` is ``"preact"``, ``False`` None)."""
    if residual is True:
        return "preact"
    if residual is None or residual is False:
        return None
    if residual not in RESIDUAL:
        raise ValueError(f"residual must be None, False, True, 'linear' or 'preact', got {residual!r}")
    return residual


def drop_flow_logit_rows(made, state_dict, prefix) -> None:
    """Loads a K=1 Gaussian state saved with 3 output rows per dimension (logit, mu, log sigma;
    before the affine layer dropped its unused logit) into ``made``: keeps the mu and log sigma rows."""
    if not made._affine:
        return
    for name in ("output.weight", "output.bias", "output.out_degrees", "direct.weight", "direct.out_degrees",
                 "context_out.weight"):
        t = state_dict.get(prefix + name)
        if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == 3 * made.D:
            state_dict[prefix + name] = t.unflatten(0, (made.D, 3))[:, 1:].flatten(0, 1).clone()


def layer_param(m, name: str = "weight"):
    """A layer's parameter from its dict (fast), or through the attribute where a parametrization
    (``torch.nn.utils.parametrize``, weight_norm, spectral_norm) replaced it."""
    p = m._parameters
    return p[name] if name in p else getattr(m, name)
