"""Cases of the ``made`` family (forward, forward+backward) and of ``made sample``.

``af.MADE(D, [H, H])``, ReLU, Bernoulli outputs; headline D=784, hidden [2000,
2000], batch 128 (16 samples). Providers of the forward: ``reference
(af.MADE)`` (the module on the reference backend, which builds each mask from
the degrees once and reuses it while they are unchanged), ``stored masks W*M`` (the usual MADE code:
``F.linear(h, W * M, b)`` with masks stored once), the compiled functional
reference, ``unmasked MLP`` (the same network without masks; for scale) and the
module on every kernel backend. ``made fwd`` returns the logits without grad
(the kernels' prepared weights stay cached); ``made fwd+bwd`` is a training
step, log p(x) and its gradient, each parameter's version bumped before the
call as after an optimizer step. ``made train``: one whole training step through the
public API (``-log_prob(x).mean()``, backward, ``torch.optim.Adam(fused=True)`` step) of
``af.MADE(784, hidden)`` at hidden [500] and [2000, 2000], batch 100, with the natural order
and (``order="random"``: the input and output layers' degrees unsorted) a random one, on each
backend (the reference backend is the ratio's baseline). Sampling: the reference D-pass sampler
(seconds: one timed call), the same passes compiled, and each kernel backend.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import EVAL_INFO, BenchConfig, Family, Row, compile_skip, forward_backward, kernel_skip_reasons, no_grad_call, seeded

_size = lambda B, D, H: {"B": B, "D": D, "hidden": (H, H)}  # noqa: E731
_samples = lambda n, D, H: {"n": n, "D": D, "hidden": (H, H)}  # noqa: E731
_train = lambda B, D, *hidden, order=None: {"B": B, "D": D, "hidden": tuple(hidden),  # noqa: E731
                                            **({"order": order} if order else {})}  # order: natural unless given

SIZES = {
    "made": {"headline": [_size(128, 784, 2000)],
             "sweep": [_size(128, 196, 500), _size(128, 784, 500), _size(128, 784, 2000)],
             "quick": [_size(4, 8, 16)], "quick_sweep": [_size(4, 8, 16), _size(4, 12, 16)]},
    "made train": {"headline": [_train(100, 784, 500), _train(100, 784, 2000, 2000),
                                _train(100, 784, 500, order="random")],
                   "sweep": [_train(100, 196, 500), _train(100, 784, 500), _train(100, 784, 2000, 2000),
                             _train(100, 784, 500, order="random"), _train(100, 784, 2000, 2000, order="random")],
                   "quick": [_train(4, 8, 16)], "quick_sweep": [_train(4, 8, 16), _train(4, 12, 16, 16)]},
    "made sample": {"headline": [_samples(16, 784, 2000)],
                    "sweep": [_samples(16, 196, 500), _samples(16, 784, 500), _samples(16, 784, 2000)],
                    "quick": [_samples(4, 8, 16)], "quick_sweep": [_samples(4, 8, 16), _samples(4, 12, 16)]},
}
TRAIN_INFO = "parameter versions bumped before each call, as after an optimizer step: prepared weights rebuilt"


def setup(cfg: BenchConfig, s: dict, backend: str = "reference"):
    """``af.MADE(D, hidden, order=s.get("order"))`` (weights and a random order from ``cfg.seed``),
    x [B, D] in {0, 1} or u [n, D]."""
    from ..nn import MADE

    n = s.get("B", s.get("n"))
    with seeded(cfg.seed):
        model = MADE(s["D"], list(s["hidden"]), order=s.get("order"), seed=cfg.seed).to(cfg.device)
        x = torch.bernoulli(torch.full((n, s["D"]), 0.5)).to(cfg.device)
        u = torch.rand(n, s["D"]).to(cfg.device)
    if backend != "reference":
        model.set_backend(backend)
    return model, x, u


def layer_args(model) -> tuple:
    """``(hidden layers, output layer)`` of a MADE as ``reference.made.made_forward`` takes
    them: ``(weight, bias, in_degrees, out_degrees)`` each (no direct layer, no context)."""
    args = [(m.weight, m.bias, m.in_degrees, m.out_degrees) for m in list(model.layers) + [model.output]]
    return args[:-1], args[-1]


def _stored_masks_mlp(x, hidden, output, masked: bool):
    """The usual MADE code: ``F.linear(h, W * M, b)`` with masks built once (or no masks)."""
    from ..reference.masked_linear import degree_mask

    layers = [(w, b, degree_mask(din, dout, i == len(hidden), w.dtype) if masked else None)
              for i, (w, b, din, dout) in enumerate(hidden + [output])]

    def mlp():
        h = x
        for i, (w, b, m) in enumerate(layers):
            h = F.linear(h, w if m is None else w * m, b)
            h = torch.relu(h) if i < len(layers) - 1 else h
        return h
    return mlp


def _forward(s, provider, grad):
    """``made fwd`` (logits, no grad) or ``made fwd+bwd`` (log p(x), backward) of ``provider``."""
    def make(cfg):
        from ..reference import made as ref
        from ..reference.heads import bernoulli_log_prob

        eager = provider in ("reference", "stored", "compiled", "unmasked")
        model, x, _ = setup(cfg, s, "reference" if eager else provider)
        hidden, output = layer_args(model)
        if provider == "compiled":
            f = torch.compile(ref.made_forward)
            logits = lambda: f(x, hidden, output, model.activation)  # noqa: E731
        elif provider in ("stored", "unmasked"):
            logits = _stored_masks_mlp(x, hidden, output, masked=provider == "stored")
        else:
            logits = lambda: model(x)  # noqa: E731
        if not grad:
            return no_grad_call(logits)
        params = list(model.parameters())

        def log_prob():
            for p in params:  # the optimizer step: new weight versions
                torch.autograd.graph.increment_version(p)
            return bernoulli_log_prob(logits(), x).sum(-1)
        return forward_backward(log_prob, lambda: model.zero_grad(set_to_none=True))
    return make


def _sample(s, provider):
    def make(cfg):
        model, _, u = setup(cfg, s, "reference" if provider == "compiled" else provider)
        n = u.shape[0]
        if provider != "compiled":
            return no_grad_call(lambda: model.sample(n, u=u))
        from ..reference import heads
        from ..reference import made as ref
        hidden, output = layer_args(model)
        f = torch.compile(ref.made_forward)
        x0 = torch.zeros(n, s["D"], device=u.device, dtype=u.dtype)
        return no_grad_call(lambda: ref.sample_by_passes(lambda x: f(x, hidden, output, model.activation),
                                                         heads.bernoulli_sample, heads.bernoulli_log_prob,
                                                         model.order, x0, u))
    return make


def made_rows(cfg: BenchConfig, s: dict) -> list:
    kernels = kernel_skip_reasons("made", cfg.device)
    rows = []
    for what, grad in (("fwd", False), ("fwd+bwd", True)):
        op = f"made {what}"
        info = TRAIN_INFO if grad else EVAL_INFO
        rows += [Row(op, "reference (af.MADE)", _forward(s, "reference", grad)),
                 Row(op, "stored masks W*M", _forward(s, "stored", grad)),
                 Row(op, "torch.compile reference", _forward(s, "compiled", grad), skip=compile_skip(cfg),
                     kind="compiled", warmup=2),
                 Row(op, "unmasked MLP", _forward(s, "unmasked", grad), kind="baseline")]
        rows += [Row(op, name, _forward(s, name, grad), skip=why, kind="kernel", info=info)
                 for name, why in kernels.items()]
    return rows


def _train_step(s, provider):
    """One Adam training step of ``af.MADE`` on ``provider``: zero grads, ``-log_prob(x).mean()``,
    backward, ``opt.step()`` (the weights change every call, as in training)."""
    def make(cfg):
        model, x, _ = setup(cfg, s, provider)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as `armodel-fast train` makes it

        def step():
            opt.zero_grad(set_to_none=True)
            loss = -model.log_prob(x).mean()
            loss.backward()
            opt.step()
            return loss
        return step
    return make


def made_train_rows(cfg: BenchConfig, s: dict) -> list:
    kernels = kernel_skip_reasons("made", cfg.device)
    op = "made train"
    info = "forward, backward and Adam step through af.MADE (weights change every call)"
    rows = [Row(op, "reference (af.MADE)", _train_step(s, "reference"), info=info)]
    rows += [Row(op, name, _train_step(s, name), skip=why, kind="kernel", info=info)
             for name, why in kernels.items()]
    return rows


def made_sample_rows(cfg: BenchConfig, s: dict) -> list:
    kernels = kernel_skip_reasons("made", cfg.device)
    op = "made sample"
    rows = [Row(op, "reference D-pass", _sample(s, "reference"), repeats=1,
                info=f"{s['D']} forward passes; 1 timed call"),
            Row(op, "torch.compile per-pass fwd", _sample(s, "compiled"), skip=compile_skip(cfg),
                kind="compiled", repeats=1, info=f"{s['D']} compiled forward passes; 1 timed call")]
    rows += [Row(op, name, _sample(s, name), skip=why, kind="kernel") for name, why in kernels.items()]
    return rows


FAMILIES = {"made": Family(SIZES["made"], made_rows), "made train": Family(SIZES["made train"], made_train_rows),
            "made sample": Family(SIZES["made sample"], made_sample_rows)}
