"""The NADE family's test data, read from ``SPECS`` (armodel_fast/ops/nade/spec.py).

For every spec: its module class and how to build it. For every x kind (the specs'
``x_kind``; the MADE heads of tests/test_fuzz.py use the same kinds): valid inputs, the
invalid ones every backend must refuse with the reference's error, where a uniform is too
close to the threshold the reference compared it with (samples there may differ by
rounding), and the K the tests use. A model with an existing x kind needs no test edit; a
new x kind adds its entry to ``X_KINDS`` here, and only here.
"""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional

import torch

import armodel_fast  # noqa: F401  (defines every NADE-family module)
from armodel_fast.nn.nade import NADEBase
from armodel_fast.ops.nade import SPECS, NadeSpec


def with_value(t: torch.Tensor, index, value) -> torch.Tensor:
    """A copy of ``t`` with one entry (flat ``index``) set to ``value``."""
    t = t.clone()
    t.view(-1)[index] = value
    return t


def _cdf_ties(logits: torch.Tensor, u: torch.Tensor, tie: float) -> torch.Tensor:
    """Rows where some u is within ``tie`` of a cumulative softmax probability of ``logits``."""
    cdf = torch.cumsum(torch.softmax(logits, -1), -1)
    return ((cdf - u[..., None]).abs() < tie).flatten(1).any(1)


class XKindCases(NamedTuple):
    data: Callable       # (shape, K, dtype, generator=None, device="cpu") -> a valid x
    bad: Callable        # (x, K, dtype) -> {name: an invalid x for log_prob}
    near_tie: Callable   # (outputs [n, D, ...], u [n, D, ...], tie) -> bool [n]
    K_min: int           # the smallest K the fuzz draws (models whose shapes have K)
    module_K: Optional[int]  # the K of the modules the module tests build (None: no K)
    x_grad: bool         # x can require grad and every backend returns dx (binary, real)
    continuous: bool     # samples are compared up to rounding, not exactly


def _on(t: torch.Tensor, dtype, device) -> torch.Tensor:
    return t.to(device=device, dtype=dtype)


X_KINDS: Dict[str, XKindCases] = {
    "binary": XKindCases(
        data=lambda shape, K, dtype, g=None, device="cpu": _on(torch.randint(0, 2, shape, generator=g), dtype,
                                                                 device),
        bad=lambda x, K, dtype: {"x value 2": with_value(x, 0, 2.0), "x value 0.5": with_value(x, -1, 0.5)},
        near_tie=lambda out, u, tie: ((u - torch.sigmoid(out)).abs() < tie).any(1),
        K_min=2, module_K=None, x_grad=True, continuous=False),
    "categorical": XKindCases(
        data=lambda shape, K, dtype, g=None, device="cpu": torch.randint(0, K, shape, generator=g).to(device),
        bad=lambda x, K, dtype: {"x class K": with_value(x, 0, K), "x class -1": with_value(x, -1, -1),
                                 "x float classes": x.to(dtype)},
        near_tie=_cdf_ties,
        K_min=2, module_K=3, x_grad=False, continuous=False),
    "real": XKindCases(
        data=lambda shape, K, dtype, g=None, device="cpu": _on(
            torch.randn(shape, generator=g, dtype=torch.float64), dtype, device),
        bad=lambda x, K, dtype: {"x nan": with_value(x, 0, float("nan")), "x inf": with_value(x, -1, float("inf")),
                                 "x integer": x.long()},
        near_tie=lambda out, u, tie: _cdf_ties(out[:, :, 0], u[..., 0], tie),  # the mixture component's draw
        K_min=1, module_K=2, x_grad=True, continuous=True),
}


def cases(spec: NadeSpec) -> XKindCases:
    return X_KINDS[spec.x_kind]


def needs_K(spec: NadeSpec) -> bool:
    return "K" in spec.shapes["W"] + spec.shapes["V"]


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def module_class(spec: NadeSpec) -> type:
    """The ``NADEBase`` subclass of ``spec``."""
    found = [c for c in _subclasses(NADEBase) if c.__dict__.get("spec") is spec]
    assert len(found) == 1, f"{spec.op}: expected one NADEBase subclass with this spec, got {found}"
    return found[0]


def build(spec: NadeSpec, D: int, H: int, K: Optional[int] = None, **kw):
    """The module of ``spec`` (``K``: the x kind's module K when None; ignored without one)."""
    K = cases(spec).module_K if K is None else K
    return module_class(spec)(D, H, K, **kw) if needs_K(spec) else module_class(spec)(D, H, **kw)


def x_for(spec: NadeSpec, B: int, D: int, K: Optional[int], dtype, g=None, device="cpu") -> torch.Tensor:
    """A valid x [B, D] for ``spec``."""
    return cases(spec).data((B, D), cases(spec).module_K if K is None else K, dtype, g, device)


# Specs with a native kernel (cpp and cuda), by their native ``kind``; with every fast backend.
NATIVE: Dict[int, NadeSpec] = {s.kind: s for s in SPECS.values() if s.kind is not None}
FAST: Dict[str, NadeSpec] = {op: s for op, s in SPECS.items() if s.kind is not None and s.triton_module is not None}
