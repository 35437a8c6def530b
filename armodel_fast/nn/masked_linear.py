"""MaskedLinear: a drop-in for ``nn.Linear`` whose mask comes from degrees."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..dispatch import check_backend, resolve_backend
from .._validate import check_bool, check_positive_int, check_tensor
from ..ops import masked_linear as ops
from ..reference.masked_linear import degree_mask


def _degrees(name: str, v, n: int) -> torch.Tensor:
    t = torch.as_tensor(v) if not isinstance(v, torch.Tensor) else v
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer degrees, got dtype {t.dtype}")
    if t.dim() != 1 or t.numel() != n:
        raise ValueError(f"{name} must be a 1-D tensor of length {n}, got shape {tuple(t.shape)}")
    return t.detach().to(torch.long)


class MaskedLinear(nn.Module):
    """``y = x @ (W * M).T + bias`` with ``M[k, j] = 1{out_degrees[k] >= in_degrees[j]}``
    (``>`` when ``strict``), docs/DESIGN.md section 4.

    x [..., in_features] -> [..., out_features]. ``weight``/``bias`` are laid out
    exactly as in ``nn.Linear``; the degrees are buffers and can be changed with
    :meth:`set_degrees` (MADE's mask switching). The fast backends cache the
    degree-sorted weights while weight and degrees are unchanged (see
    ``armodel_fast.ops.masked_linear``: a write through ``weight.data`` to a few
    entries needs ``armodel_fast.clear_cache()``).
    """

    op = "masked_linear"

    def __init__(self, in_features: int, out_features: int, in_degrees, out_degrees,
                 strict: bool = False, bias: bool = True, backend: str = "reference",
                 device=None, dtype=None):
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.strict = check_bool("strict", strict)
        check_bool("bias", bias)
        self.backend = check_backend(backend, self.op)
        self.last_backend = None
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **fk))
        self.bias = nn.Parameter(torch.empty(out_features, **fk)) if bias else None
        self.register_buffer("in_degrees", _degrees("in_degrees", in_degrees, in_features).to(device))
        self.register_buffer("out_degrees", _degrees("out_degrees", out_degrees, out_features).to(device))
        self.reset_parameters()

    def set_backend(self, backend: str) -> "MaskedLinear":
        self.backend = check_backend(backend, self.op)
        return self

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def set_degrees(self, in_degrees=None, out_degrees=None) -> None:
        """Replace the degree vectors (the mask) in place; weights are untouched."""
        if in_degrees is not None:
            self.in_degrees.copy_(_degrees("in_degrees", in_degrees, self.in_features))
        if out_degrees is not None:
            self.out_degrees.copy_(_degrees("out_degrees", out_degrees, self.out_features))

    def mask(self) -> torch.Tensor:
        """The [out_features, in_features] 0/1 mask (materialised; for inspection)."""
        return degree_mask(self.in_degrees, self.out_degrees, self.strict, self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in_features] -> [..., out_features] (validated by ``ops.masked_linear``, the
        same checks for every backend)."""
        check_tensor("x", x)
        self.last_backend = resolve_backend(
            self.backend, self.op, x.device,
            work=lambda: ops.auto_work(x, self.weight, self.bias, self.in_degrees, self.out_degrees))
        return ops.masked_linear(x, self.weight, self.bias, self.in_degrees, self.out_degrees,
                                 self.strict, backend=self.last_backend)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"strict={self.strict}, bias={self.bias is not None}, backend={self.backend!r}")
