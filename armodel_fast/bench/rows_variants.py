"""Rows for the NADE variants: categorical NADE (K classes) and RNADE (mixture of K Gaussians).

Log-prob forward, forward+backward and sampling: the reference modules' step loop
(eager; under torch.compile only with ``--compile`` or a short D) against each
kernel backend. Headline sizes are the digits' shape (D=64, 17 grey levels).
"""
from __future__ import annotations

import torch

from .core import BenchConfig, Row

_var = lambda B, D, H, K: {"B": B, "D": D, "H": H, "K": K}  # noqa: E731

SIZES = {
    "categorical_nade": {"headline": [_var(256, 64, 500, 17)],
                         "sweep": [_var(256, 64, 500, 17), _var(256, 784, 500, 4)],
                         "quick": [_var(4, 6, 5, 3)], "quick_sweep": [_var(4, 6, 5, 3), _var(4, 8, 6, 4)]},
    "rnade": {"headline": [_var(256, 64, 500, 10)],
              "sweep": [_var(256, 64, 500, 10), _var(256, 784, 500, 5)],
              "quick": [_var(4, 6, 5, 2)], "quick_sweep": [_var(4, 6, 5, 2), _var(4, 8, 6, 3)]},
}


def _setup(cfg, s, model_name, backend="reference"):
    """The module (parameters from ``cfg.seed``), x [B, D] and u of its sampler."""
    from ..nn import RNADE, CategoricalNADE

    cls = CategoricalNADE if model_name == "categorical_nade" else RNADE
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = cls(s["D"], s["H"], s["K"]).to(cfg.device)
        if model_name == "categorical_nade":
            x = torch.randint(0, s["K"], (s["B"], s["D"]))
        else:
            x = torch.randn(s["B"], s["D"])
        u = torch.rand(model.uniforms_shape(s["B"]))
    if backend != "reference":
        model.set_backend(backend)
    return model, x.to(cfg.device), u.to(cfg.device)


def _maker(s, model_name, backend, what, compiled=False):
    def make(cfg):
        from .rows import _forward, _forward_backward
        model, x, u = _setup(cfg, s, model_name, backend)
        if what == "sample":
            f = torch.compile(model.sample) if compiled else model.sample
            return _forward(lambda: f(s["B"], u=u))
        f = torch.compile(model.log_prob) if compiled else model.log_prob
        if what == "fwd":
            return _forward(lambda: f(x))
        return _forward_backward(lambda: f(x), lambda: model.zero_grad(set_to_none=True))
    return make


def variant_rows(model_name: str):
    def rows(cfg: BenchConfig, s: dict) -> list:
        from .rows import _compile_skip, kernel_skip_reasons
        loop_skip = _compile_skip(cfg, s["D"])
        kernels = kernel_skip_reasons(model_name, cfg.device)
        out = []
        for what in ("fwd", "fwd+bwd", "sample"):
            op = f"{model_name} {'log_prob ' + what if what != 'sample' else 'sample'}"
            out += [Row(op, "reference loop", _maker(s, model_name, "reference", what)),
                    Row(op, "torch.compile loop", _maker(s, model_name, "reference", what, compiled=True),
                        skip=loop_skip, kind="compiled", warmup=2)]
            out += [Row(op, name, _maker(s, model_name, name, what), skip=why, kind="kernel")
                    for name, why in kernels.items()]
        return out
    return rows
