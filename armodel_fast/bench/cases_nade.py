"""Cases of the ``nade`` family: binary NADE log-prob (fwd, fwd+bwd) and sampling.

Headline size B=256, D=784, H=500 (binarized-MNIST sized), fp32, parameters as
``af.NADE`` initialises them, x ~ Bernoulli(0.5) (half the steps update the
hidden state), u [B, D] uniforms. Providers: the two reference forms of
``armodel_fast.reference.nade`` (``loop``: the step loop, O(BH) memory;
``cumsum``: vectorised, materialises [B, D, H]; no sampler), their
torch.compile, and ``af.NADE`` on every kernel backend.
"""
from __future__ import annotations

import functools

import torch

from .core import BenchConfig, Family, Row, compile_skip, forward_backward, kernel_skip_reasons, no_grad_call, seeded

_size = lambda B, D, H: {"B": B, "D": D, "H": H}  # noqa: E731

SIZES = {"headline": [_size(256, 784, 500)],
         "sweep": [_size(256, D, H) for D in (64, 196, 784) for H in (128, 500)],
         "quick": [_size(4, 8, 4)], "quick_sweep": [_size(4, 8, 4), _size(4, 12, 6)]}


def setup(cfg: BenchConfig, s: dict, backend: str = "reference"):
    """``af.NADE(D, H)`` (parameters from ``cfg.seed``), x [B, D] in {0, 1} and u [B, D]."""
    from ..nn import NADE

    with seeded(cfg.seed):
        model = NADE(s["D"], s["H"]).to(cfg.device)
        x = torch.bernoulli(torch.full((s["B"], s["D"]), 0.5)).to(cfg.device)
        u = torch.rand(s["B"], s["D"]).to(cfg.device)
    if backend != "reference":
        model.set_backend(backend)
    return model, x, u


def _reference_log_prob(s, form, grad, compiled=False):
    def make(cfg):
        from ..reference.nade import nade_log_prob
        model, x, _ = setup(cfg, s)
        f = functools.partial(nade_log_prob, form=form)
        if compiled:
            f = torch.compile(f)
        fn = lambda: f(x, *model.params())  # noqa: E731
        return forward_backward(fn, lambda: model.zero_grad(set_to_none=True)) if grad else no_grad_call(fn)
    return make


def _reference_sample(s, compiled=False):
    def make(cfg):
        from ..reference.nade import nade_sample
        model, _, u = setup(cfg, s)
        f = torch.compile(nade_sample) if compiled else nade_sample
        return no_grad_call(lambda: f(*model.params(), u))
    return make


def _module(s, backend, what):
    """``af.NADE`` on ``backend``: log_prob (``fwd``, ``fwd+bwd``) or sample."""
    def make(cfg):
        model, x, u = setup(cfg, s, backend)
        if what == "sample":
            return no_grad_call(lambda: model.sample(s["B"], u=u))
        fn = lambda: model.log_prob(x)  # noqa: E731
        zero = lambda: model.zero_grad(set_to_none=True)  # noqa: E731
        return forward_backward(fn, zero) if what == "fwd+bwd" else no_grad_call(fn)
    return make


def nade_rows(cfg: BenchConfig, s: dict) -> list:
    loop_skip = compile_skip(cfg, s["D"])
    kernels = kernel_skip_reasons("nade", cfg.device)
    rows = []
    for what, grad in (("fwd", False), ("fwd+bwd", True)):
        op = f"nade log_prob {what}"
        rows += [Row(op, "reference loop", _reference_log_prob(s, "loop", grad)),
                 Row(op, "reference cumsum", _reference_log_prob(s, "cumsum", grad)),
                 Row(op, "torch.compile loop", _reference_log_prob(s, "loop", grad, compiled=True),
                     skip=loop_skip, kind="compiled", warmup=2),
                 Row(op, "torch.compile cumsum", _reference_log_prob(s, "cumsum", grad, compiled=True),
                     skip=compile_skip(cfg), kind="compiled", warmup=2)]
        rows += [Row(op, name, _module(s, name, what), skip=why, kind="kernel") for name, why in kernels.items()]
    op = "nade sample"
    rows += [Row(op, "reference loop", _reference_sample(s)),
             Row(op, "torch.compile loop", _reference_sample(s, compiled=True), skip=loop_skip, kind="compiled",
                 warmup=2)]
    rows += [Row(op, name, _module(s, name, "sample"), skip=why, kind="kernel") for name, why in kernels.items()]
    return rows


FAMILIES = {"nade": Family(SIZES, nade_rows)}
