"""MADE test models shared by test_made_fast.py and test_made_inverse.py: named configurations, a
(reference, fast) pair with equal parameters, data, the fast backends that run here, and the
autograd nodes behind a result (graph_nodes), an extension that counts its calls (CountingExt)."""
import pytest
import torch

import armodel_fast as af
from armodel_fast import dispatch

FAST = [b for b in dispatch.BACKENDS[1:] if dispatch._why_not(b, "made", torch.device("cpu")) is None]
SKIP_WITHOUT_FAST = pytest.mark.skipif(not FAST, reason=f"no fast MADE backend here:\n{af.explain('made')}")
backends = pytest.mark.parametrize("backend", FAST)

CONFIGS = {
    "bernoulli": dict(hidden=[13, 11]),
    "bernoulli-direct-context-masks": dict(hidden=[12, 9], direct=True, context_dim=3, num_masks=3, order="random"),
    "bernoulli-one-layer-elu": dict(hidden=[10], activation="elu", order=[3, 0, 6, 1, 5, 2, 4]),
    "categorical-direct": dict(hidden=[14, 10], out="categorical", K=3, direct=True, num_masks=2),
    "gaussian-mixture-context": dict(hidden=[11, 8, 9], out="gaussian", K=2, context_dim=2, activation="tanh"),
    "gaussian-flow": dict(hidden=[10, 10], out="gaussian", direct=True, context_dim=2, order="random"),
    # residual programs (reference.made.layer_program): nflows' blocks, zuko's with a width change
    "bernoulli-residual-preact-context": dict(hidden=[10, 10], residual="preact", direct=True, context_dim=2,
                                              num_masks=2, order="random"),
    "gaussian-flow-residual-linear": dict(hidden=[9, 12], out="gaussian", residual="linear", context_dim=2,
                                          order="random", activation="elu"),
}


def pair(name, backend, dtype=torch.float64, D=7, seed=0):
    """(reference model, fast model) with equal parameters."""
    kw = dict(CONFIGS[name])
    hidden = kw.pop("hidden")
    ref = af.MADE(D, hidden, seed=seed, dtype=dtype, **kw)
    with torch.no_grad():  # spread the parameters so every term matters
        scale = 0.25 if kw.get("out") == "gaussian" else 0.7  # a flow's scales compound over steps
        for p in ref.parameters():
            p.normal_(0, scale, generator=torch.Generator().manual_seed(seed + p.numel()))
    fast = af.MADE(D, hidden, seed=seed, dtype=dtype, backend=backend, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def data(model, B, seed=1):
    g = torch.Generator().manual_seed(seed)
    if model.out == "bernoulli":
        x = torch.randint(0, 2, (B, model.D), generator=g).to(model.dtype)
    elif model.out == "categorical":
        x = torch.randint(0, model.K, (B, model.D), generator=g)
    else:
        x = torch.randn(B, model.D, generator=g, dtype=model.dtype)
    ctx = torch.randn(B, model.context_dim, generator=g, dtype=model.dtype) if model.context_dim else None
    return x, ctx


def as_tuple(p):
    return p if isinstance(p, tuple) else (p,)


def graph_nodes(t, depth=30):
    """Names of the autograd nodes within ``depth`` steps of t's grad_fn."""
    names, frontier = set(), [t.grad_fn]
    for _ in range(depth):
        frontier = [n for n in frontier if n is not None]
        names |= {type(n).__name__ for n in frontier}
        frontier = [m for n in frontier for m, _ in n.next_functions]
    return names


class CountingExt:
    """The C++ extension ``ext``, counting the calls of the entries named in ``names``."""

    def __init__(self, ext, names):
        self.ext, self.calls = ext, {name: 0 for name in names}

    def __getattr__(self, name):
        fn = getattr(self.ext, name)
        if name not in self.calls:
            return fn

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return fn(*args, **kwargs)
        return counted
