"""Cases of the ``categorical_nade`` and ``rnade`` families: the NADE variants.

Log-prob forward, forward+backward and sampling of ``af.CategoricalNADE`` (K
classes) and ``af.RNADE`` (a mixture of K Gaussians): the reference module's step
loop (eager; under torch.compile only with ``--compile`` or a short D) against
each kernel backend. Headline sizes are the digits' shape: B=256, D=64, H=500,
17 grey levels (categorical) or 10 components (RNADE).
"""
from __future__ import annotations

import torch

from .core import BenchConfig, Family, Row, compile_skip, forward_backward, kernel_skip_reasons, no_grad_call, seeded

_size = lambda B, D, H, K: {"B": B, "D": D, "H": H, "K": K}  # noqa: E731

SIZES = {
    "categorical_nade": {"headline": [_size(256, 64, 500, 17)],
                         "sweep": [_size(256, 64, 500, 17), _size(256, 784, 500, 4)],
                         "quick": [_size(4, 6, 5, 3)], "quick_sweep": [_size(4, 6, 5, 3), _size(4, 8, 6, 4)]},
    "rnade": {"headline": [_size(256, 64, 500, 10)],
              "sweep": [_size(256, 64, 500, 10), _size(256, 784, 500, 5)],
              "quick": [_size(4, 6, 5, 2)], "quick_sweep": [_size(4, 6, 5, 2), _size(4, 8, 6, 3)]},
}


def setup(cfg: BenchConfig, s: dict, family: str, backend: str = "reference"):
    """The module (parameters from ``cfg.seed``), x [B, D] and the uniforms u of its sampler."""
    from ..nn import RNADE, CategoricalNADE

    cls = CategoricalNADE if family == "categorical_nade" else RNADE
    with seeded(cfg.seed):
        model = cls(s["D"], s["H"], s["K"]).to(cfg.device)
        if family == "categorical_nade":
            x = torch.randint(0, s["K"], (s["B"], s["D"]))
        else:
            x = torch.randn(s["B"], s["D"])
        u = torch.rand(model.uniforms_shape(s["B"]))
    if backend != "reference":
        model.set_backend(backend)
    return model, x.to(cfg.device), u.to(cfg.device)


def _module(s, family, backend, what, compiled=False):
    """The module on ``backend``: log_prob (``fwd``, ``fwd+bwd``) or sample, optionally compiled."""
    def make(cfg):
        model, x, u = setup(cfg, s, family, backend)
        if what == "sample":
            f = torch.compile(model.sample) if compiled else model.sample
            return no_grad_call(lambda: f(s["B"], u=u))
        f = torch.compile(model.log_prob) if compiled else model.log_prob
        if what == "fwd":
            return no_grad_call(lambda: f(x))
        return forward_backward(lambda: f(x), lambda: model.zero_grad(set_to_none=True))
    return make


def variant_rows(family: str):
    """The row builder of ``family`` (``categorical_nade`` or ``rnade``)."""
    def rows(cfg: BenchConfig, s: dict) -> list:
        loop_skip = compile_skip(cfg, s["D"])
        kernels = kernel_skip_reasons(family, cfg.device)
        out = []
        for what in ("fwd", "fwd+bwd", "sample"):
            op = f"{family} {'log_prob ' + what if what != 'sample' else 'sample'}"
            out += [Row(op, "reference loop", _module(s, family, "reference", what)),
                    Row(op, "torch.compile loop", _module(s, family, "reference", what, compiled=True),
                        skip=loop_skip, kind="compiled", warmup=2)]
            out += [Row(op, name, _module(s, family, name, what), skip=why, kind="kernel")
                    for name, why in kernels.items()]
        return out
    return rows


FAMILIES = {name: Family(SIZES[name], variant_rows(name)) for name in ("categorical_nade", "rnade")}
