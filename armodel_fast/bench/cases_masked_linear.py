"""Cases of the ``masked_linear`` family: one masked layer of a MADE, fwd and fwd+bwd.

Layers of a MADE at D=784 with a random order: the input layer D -> H
(``layer="input"``) or the hidden layer H -> H after it, batch 128, about half
the weights masked; ``order="natural"``: the input layer of a natural-order MADE
(its degrees already sorted, as in every hidden layer: the kernels' training path
runs on the weights as stored, while a random order's input layer gathers them). Providers: ``dense W*M`` (``F.linear(x, W * M,
b)`` with a stored mask, what MADE code does), its torch.compile, ``unmasked
F.linear`` (the cost of no mask; for scale) and
``armodel_fast.ops.masked_linear.masked_linear`` on every kernel backend.

``fwd`` is evaluation (no grad: the prepared degree-sorted weights stay
cached); in ``fwd+bwd`` the weight's version is bumped before every call, as
after an optimizer step, so a kernel backend prepares its weights every time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import (EVAL_INFO, BenchConfig, Family, Row, compile_skip, forward_backward, kernel_skip_reasons, no_grad_call,
                   seeded, zero_grads)

def _size(B, D, H, layer="input", order="random"):
    s = {"B": B, "D": D, "H": H, "layer": layer}
    return s if order == "random" else {**s, "order": order}


SIZES = {"headline": [_size(128, 784, 500), _size(128, 784, 2000), _size(128, 784, 2000, "hidden"),
                      _size(128, 784, 500, order="natural"), _size(128, 784, 2000, order="natural")],
         "sweep": [_size(128, 8, 16), _size(128, 32, 64), _size(128, 64, 128), _size(128, 196, 500),
                   _size(128, 784, 500), _size(128, 784, 2000), _size(128, 784, 500, "hidden"),
                   _size(128, 784, 2000, "hidden"), _size(128, 196, 500, order="natural"),
                   _size(128, 784, 500, order="natural"), _size(128, 784, 2000, order="natural"),
                   _size(512, 784, 2000)],
         "quick": [_size(4, 8, 16)], "quick_sweep": [_size(4, 8, 16), _size(4, 8, 16, "hidden")]}


def setup(cfg: BenchConfig, s: dict):
    """x [B, in] (requires grad), W [out, in], b [out], the two degree vectors and the mask
    [out, in] of the layer ``s["layer"]`` of a MADE with a random order."""
    from ..reference.made import hidden_degrees, input_degrees
    from ..reference.masked_linear import degree_mask

    with seeded(cfg.seed):
        m0 = input_degrees(torch.arange(s["D"]) if s.get("order") == "natural" else torch.randperm(s["D"]))
        m1, m2 = hidden_degrees(m0, [s["H"], s["H"]], torch.Generator().manual_seed(cfg.seed))
        din, dout = (m0, m1) if s["layer"] == "input" else (m1, m2)
        w = torch.randn(dout.numel(), din.numel()) / din.numel() ** 0.5
        b = torch.randn(dout.numel()) * 0.1
        x = torch.randn(s["B"], din.numel())
    dev = cfg.device
    w, b, x = (t.to(dev).requires_grad_(True) for t in (w, b, x))
    mask = degree_mask(din, dout, False, w.dtype).to(dev)
    return x, w, b, din.to(dev), dout.to(dev), mask


def _provider(s, provider, grad):
    def make(cfg):
        x, w, b, din, dout, mask = setup(cfg, s)
        if provider == "unmasked":
            fn = lambda: F.linear(x, w, b)  # noqa: E731
        elif provider in ("dense", "compiled"):
            f = (lambda x, w, m, b: F.linear(x, w * m, b))  # noqa: E731
            f = torch.compile(f) if provider == "compiled" else f
            fn = lambda: f(x, w, mask, b)  # noqa: E731
        else:
            from ..ops.masked_linear import masked_linear
            bump = torch.autograd.graph.increment_version if grad else (lambda t: None)

            def fn():
                bump(w)  # training: the weight changed since the last call (cache miss)
                return masked_linear(x, w, b, din, dout, False, backend=provider)
        return forward_backward(fn, zero_grads(x, w, b)) if grad else no_grad_call(fn)
    return make


def masked_linear_rows(cfg: BenchConfig, s: dict) -> list:
    kernels = kernel_skip_reasons("masked_linear", cfg.device)
    rows = []
    for what, grad in (("fwd", False), ("fwd+bwd", True)):
        op = f"masked_linear {what}"
        info = ("weight version bumped before each call, as after an optimizer step: prepared weights rebuilt"
                if grad else EVAL_INFO)
        rows += [Row(op, "unmasked F.linear", _provider(s, "unmasked", grad), kind="baseline"),
                 Row(op, "dense W*M", _provider(s, "dense", grad)),
                 Row(op, "torch.compile dense W*M", _provider(s, "compiled", grad), skip=compile_skip(cfg),
                     kind="compiled", warmup=2)]
        rows += [Row(op, name, _provider(s, name, grad), skip=why, kind="kernel", info=info)
                 for name, why in kernels.items()]
    return rows


FAMILIES = {"masked_linear": Family(SIZES, masked_linear_rows)}
