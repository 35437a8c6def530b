"""One spec per NADE-family model: everything the shared ops, launchers and modules need.

All three models share the recurrence ``a_0 = c``, ``h_t = sigmoid(a_t)``, step t
models dimension ``d = order[t]``, then ``a_{t+1} = a_t + <input update of x_d>``
(docs/DESIGN.md section 2); they differ in parameter shapes, the input update, the
per-step head and its outputs. Adding a model of this family = adding a spec here
(plus its reference, its native/Triton head and its module). A new kind of x (its
check, the dtype its samples have) is one entry of ``X_KINDS`` below.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple, Union

import torch

from ..._validate import check_binary_x, check_categorical_x, check_real_x
from ...reference import categorical_nade as _cat
from ...reference import nade as _bin
from ...reference import rnade as _rn
from ...reference.heads import bernoulli_log_prob, categorical_log_prob, gaussian_mixture_log_prob

Dim = Union[str, int]  # a size symbol ("H", "D", "K") or a literal size


@dataclass(frozen=True)
class XKind:
    """One kind of x: its check (the same for every backend; raises ValueError/TypeError naming
    ``x``) and what the kernels take and return."""
    check: Callable[[object, Dict[str, int], torch.Tensor], torch.Tensor]  # (x, sizes, W) -> x for the kernels
    integer: bool = False  # x (and samples) are int64; else W.dtype
    has_grad: bool = False  # the log-density is differentiable w.r.t. x: the backward kernels return dx


X_KINDS: Dict[str, XKind] = {
    "binary": XKind(lambda x, s, W: check_binary_x(x, s["D"], W.device, W.dtype)),  # 0/1, W.dtype
    "categorical": XKind(lambda x, s, W: check_categorical_x(x, s["D"], s["K"], W.device), integer=True),
    "real": XKind(lambda x, s, W: check_real_x(x, s["D"], W.device, W.dtype), has_grad=True),  # finite
}


@dataclass(frozen=True)
class NadeSpec:
    op: str                        # registry / custom-op stem: armodel_fast::<op>_forward ...
    kind: Optional[int]            # the native `kind` (csrc: 0 binary, 1 categorical, 2 RNADE); None: no native kernel
    shapes: Dict[str, Tuple[Dim, ...]]  # W, c, V, b in size symbols
    x_kind: str                    # a key of X_KINDS: "binary" (0/1), "categorical" (int64 in [0, K)), "real"
    output_dims: Tuple[Dim, ...]   # per-step outputs after [B, D]
    uniform_trailing: Tuple[int, ...]  # uniforms per sample: [n, D, *uniform_trailing]
    triton_module: Optional[str]   # armodel_fast.kernels.<module> with <op>_forward/_backward/_sample; None: none
    ref_outputs: Callable          # (x, W, c, V, b, order) -> outputs [B, D, *output_dims]
    head_log_prob: Callable        # (outputs, x) -> log p(x_d | x_<d) [B, D]
    ref_sample: Callable           # (W, c, V, b, order, u) -> (x [n, D], log_prob [n])

    @property
    def x_has_grad(self) -> bool:
        """The log-density is differentiable w.r.t. x too (the backward returns dx): real x."""
        return X_KINDS[self.x_kind].has_grad

    def check_x(self, x, sizes: Dict[str, int], W: torch.Tensor) -> torch.Tensor:
        """x checked for this model (every backend, before any kernel), contiguous, as the kernels take it."""
        return X_KINDS[self.x_kind].check(x, sizes, W).contiguous()

    def shape_str(self, name: str) -> str:
        return "[" + ", ".join(map(str, self.shapes[name])) + "]"

    def sizes(self, W, V) -> Dict[str, int]:
        """{H, D, K} read from W and V (no checks: see ``functional.check_params``)."""
        out = {}
        for name, t in (("W", W), ("V", V)):
            for sym, n in zip(self.shapes[name], t.shape):
                if isinstance(sym, str):
                    out.setdefault(sym, int(n))
        return out

    def shape(self, name: str, sizes: Dict[str, int]) -> Tuple[int, ...]:
        return tuple(sizes[s] if isinstance(s, str) else s for s in self.shapes[name])

    def output_shape(self, B: int, sizes: Dict[str, int]) -> Tuple[int, ...]:
        return (B, sizes["D"]) + tuple(sizes[s] if isinstance(s, str) else s for s in self.output_dims)

    def sample_dtype(self, W: torch.Tensor) -> torch.dtype:
        return torch.long if X_KINDS[self.x_kind].integer else W.dtype


def _mixture_log_prob(p, x):
    return gaussian_mixture_log_prob(*p.unbind(2), x)  # one backward (a stack), not 3 zero-filled [B, D, 3, K]


SPECS: Dict[str, NadeSpec] = {s.op: s for s in (
    NadeSpec("nade", 0, {"W": ("H", "D"), "c": ("H",), "V": ("D", "H"), "b": ("D",)}, "binary", (), (),
             "nade_triton", _bin.nade_logits_loop, bernoulli_log_prob, _bin.nade_sample),
    NadeSpec("categorical_nade", 1, {"W": ("H", "D", "K"), "c": ("H",), "V": ("D", "K", "H"), "b": ("D", "K")},
             "categorical", ("K",), (), "categorical_nade_triton", _cat.categorical_nade_logits_loop,
             categorical_log_prob, _cat.categorical_nade_sample),
    NadeSpec("rnade", 2, {"W": ("H", "D"), "c": ("H",), "V": ("D", 3, "K", "H"), "b": ("D", 3, "K")}, "real",
             (3, "K"), (2,), "rnade_triton", _rn.rnade_params_loop, _mixture_log_prob, _rn.rnade_sample),
)}
