"""NADE backend internals, C++ CPU kernels, categorical NADE and RNADE (binary NADE:
test_nade_internals_cpp.py)."""
from __future__ import annotations

import pytest
import torch

from armodel_fast.ops.nade import OPS
from armodel_fast.reference import categorical_nade as cref
from armodel_fast.reference import rnade as rref
from armodel_fast.reference.heads import categorical_log_prob, gaussian_mixture_log_prob
from nade_internals_helpers import (EXT, HAS_VARIANTS, TIE, check_log_prob_and_grads, close_grads, needs_variants,
                                    tol)


# ==== categorical NADE and RNADE (C++) ================================================================
# C++ CPU categorical NADE and RNADE kernels (csrc/nade/nade_variants_cpu.cpp) against
# the reference: log-probabilities and per-step outputs, every gradient (dx too for
# RNADE), samples from the same uniforms (rows with ties excluded), fp64 gradcheck,
# extreme weights, bad input, custom ops under torch.compile, determinism across
# thread counts. Tolerances: Part 1 helpers.


if HAS_VARIANTS:
    from armodel_fast.ops import categorical_nade as cops
    from armodel_fast.ops import rnade as rops


# ---------------------------------------------------------------- categorical NADE

def categorical_params(H, D, K, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(H, D, K, generator=g, dtype=dtype) * scale / D ** 0.5
    c = torch.randn(H, generator=g, dtype=dtype) * 0.5
    V = torch.randn(D, K, H, generator=g, dtype=dtype) * scale / H ** 0.5
    b = torch.randn(D, K, generator=g, dtype=dtype) * 0.5
    return W, c, V, b, torch.randperm(D, generator=g)


VARIANT_SHAPES = [  # (B, D, H, K)
    (1, 1, 1, 2), (3, 1, 5, 3), (5, 7, 13, 4), (9, 30, 37, 2), (6, 12, 64, 5), (17, 20, 40, 3),
]


@needs_variants
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B, D, H, K", VARIANT_SHAPES)
def test_categorical_log_prob_and_grads(B, D, H, K, dtype):
    W, c, V, b, order = categorical_params(H, D, K, dtype, seed=B + D + H)
    x = torch.randint(0, K, (B, D), generator=torch.Generator().manual_seed(K))
    check_log_prob_and_grads(cref.categorical_nade_logits_loop, categorical_log_prob, cops.categorical_nade_log_prob,
                             x, (W, c, V, b), order, dtype)


def categorical_ties(u, logits):
    """Rows where some u is within TIE of a cumulative probability of the reference."""
    cdf = torch.cumsum(torch.softmax(logits, -1), -1)[..., :-1]
    return ((cdf - u.unsqueeze(-1)).abs() < TIE).flatten(1).any(-1)


@needs_variants
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B, D, H, K", VARIANT_SHAPES + [(21, 784, 20, 4)])
def test_categorical_sample_matches_reference(B, D, H, K, dtype):
    W, c, V, b, order = categorical_params(H, D, K, dtype, seed=D * K, scale=3.0)
    u = torch.rand(B, D, generator=torch.Generator().manual_seed(2), dtype=dtype)
    x, lp = cops.categorical_nade_sample(W, c, V, b, order, u)
    xr, lpr = cref.categorical_nade_sample(W, c, V, b, order, u)
    assert x.dtype == torch.long
    keep = ~categorical_ties(u, cref.categorical_nade_logits_loop(xr, W, c, V, b, order))
    assert keep.float().mean() > 0.5
    assert torch.equal(x[keep], xr[keep])
    torch.testing.assert_close(lp[keep], lpr[keep], **tol(dtype, D)[1])
    torch.testing.assert_close(lp, cops.categorical_nade_log_prob(x, W, c, V, b, order), **tol(dtype, D)[1])


@needs_variants
def test_categorical_gradcheck_fp64():
    W, c, V, b, order = categorical_params(5, 4, 3, torch.float64, seed=1, scale=2.0)
    x = torch.randint(0, 3, (3, 4), generator=torch.Generator().manual_seed(0))
    params = [t.clone().requires_grad_() for t in (W, c, V, b)]
    assert torch.autograd.gradcheck(
        lambda *p: cops.categorical_nade_log_prob(x, *p, order, return_logits=True), params,
        eps=1e-6, atol=1e-8, rtol=1e-6)


@needs_variants
def test_categorical_extreme_and_bad_inputs():
    W, c, V, b, order = categorical_params(16, 10, 4, torch.float32, seed=2, scale=300.0)
    x = torch.randint(0, 4, (5, 10), generator=torch.Generator().manual_seed(0))
    params = [t.clone().requires_grad_() for t in (W, c, V, b)]
    lp, logits = cops.categorical_nade_log_prob(x, *params, order, return_logits=True)
    assert logits.abs().max() > 80 and torch.isfinite(lp).all()
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(lp.sum(), params))
    p64 = [t.double() for t in (W, c, V, b)]
    torch.testing.assert_close(lp.detach().double(), cref.categorical_nade_log_prob(x, *p64, order),
                               rtol=1e-4, atol=1e-3)
    xs, lps = cops.categorical_nade_sample(W, c, V, b, order, torch.rand(5, 10))
    assert torch.isfinite(lps).all() and xs.min() >= 0 and xs.max() < 4
    with pytest.raises(ValueError, match="x values must lie in"):
        cops.categorical_nade_log_prob(x + 4, W, c, V, b, order)
    with pytest.raises(TypeError, match="x must hold integer"):
        cops.categorical_nade_log_prob(x.float(), W, c, V, b, order)
    with pytest.raises(ValueError, match="V must have shape"):
        cops.categorical_nade_log_prob(x, W, c, V.transpose(1, 2), b, order)
    with pytest.raises(ValueError, match="W must have shape"):
        cops.categorical_nade_log_prob(x, W[..., 0], c, V, b, order)
    with pytest.raises(ValueError, match="x values must lie in"):
        EXT.nade_forward(1, x - 1, W, c, V, b, order)
    with pytest.raises(TypeError, match="x must be an int64"):
        EXT.nade_forward(1, x.int(), W, c, V, b, order)
    with pytest.raises(ValueError, match="u must hold uniforms"):
        cops.categorical_nade_sample(W, c, V, b, order, torch.full((2, 10), -0.1))


# ---------------------------------------------------------------- RNADE

def rnade_params(H, D, K, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(H, D, generator=g, dtype=dtype) * scale / D ** 0.5
    c = torch.randn(H, generator=g, dtype=dtype) * 0.5
    V = torch.randn(D, 3, K, H, generator=g, dtype=dtype) * scale / H ** 0.5
    b = torch.randn(D, 3, K, generator=g, dtype=dtype) * 0.5
    return W, c, V, b, torch.randperm(D, generator=g)


def _mixture_log_prob(p, x):
    return gaussian_mixture_log_prob(p[:, :, 0], p[:, :, 1], p[:, :, 2], x)


@needs_variants
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B, D, H, K", VARIANT_SHAPES)
def test_rnade_log_prob_and_grads(B, D, H, K, dtype):
    W, c, V, b, order = rnade_params(H, D, K, dtype, seed=B + D + H)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(K), dtype=dtype)
    check_log_prob_and_grads(rref.rnade_params_loop, _mixture_log_prob, rops.rnade_log_prob, x, (W, c, V, b), order,
                             dtype, x_grad=True)


def mixture_ties(u, p):
    cdf = torch.cumsum(torch.softmax(p[:, :, 0], -1), -1)[..., :-1]
    return ((cdf - u[..., 0].unsqueeze(-1)).abs() < TIE).flatten(1).any(-1)


@needs_variants
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B, D, H, K", VARIANT_SHAPES + [(9, 784, 16, 3)])
def test_rnade_sample_matches_reference(B, D, H, K, dtype):
    W, c, V, b, order = rnade_params(H, D, K, dtype, seed=D * K)
    u = torch.rand(B, D, 2, generator=torch.Generator().manual_seed(3), dtype=dtype)
    x, lp = rops.rnade_sample(W, c, V, b, order, u)
    xr, lpr = rref.rnade_sample(W, c, V, b, order, u)
    keep = ~mixture_ties(u, rref.rnade_params_loop(xr, W, c, V, b, order))
    assert keep.float().mean() > 0.5
    # x is continuous: rounding differences (and Phi^-1 in double vs the tensor dtype) carry along the steps
    xtol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x[keep], xr[keep], **xtol)
    torch.testing.assert_close(lp[keep], lpr[keep], rtol=xtol["rtol"], atol=xtol["atol"] * D)
    torch.testing.assert_close(lp, rops.rnade_log_prob(x, W, c, V, b, order), **tol(dtype, D)[1])


@needs_variants
def test_rnade_gradcheck_fp64():
    W, c, V, b, order = rnade_params(5, 4, 2, torch.float64, seed=1, scale=2.0)
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    args = [t.clone().requires_grad_() for t in (x, W, c, V, b)]
    # atol 1e-6: the mixture log-density's finite differences carry ~1e-8 of rounding noise
    assert torch.autograd.gradcheck(
        lambda x_, *p: rops.rnade_log_prob(x_, *p, order, return_logits=True), args,
        eps=1e-6, atol=1e-6, rtol=1e-5)


@needs_variants
def test_rnade_extreme_and_bad_inputs():
    W, c, V, b, order = rnade_params(16, 10, 3, torch.float32, seed=2, scale=100.0)
    x = torch.randn(5, 10) * 3
    args = [t.clone().requires_grad_() for t in (x, W, c, V, b)]
    lp, p = rops.rnade_log_prob(args[0], *args[1:], order, return_logits=True)
    assert p[:, :, 0].abs().max() > 80 and torch.isfinite(lp).all()
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(lp.sum(), args))
    xs, lps = rops.rnade_sample(W, c, V.clamp(-3, 3), b, order, torch.rand(5, 10, 2))
    assert torch.isfinite(xs).all() and torch.isfinite(lps).all()
    with pytest.raises(ValueError, match="x must be finite"):
        rops.rnade_log_prob(x / 0, W, c, V, b, order)
    with pytest.raises(ValueError, match="V must have shape"):
        rops.rnade_log_prob(x, W, c, V[:, :2], b, order)
    with pytest.raises(ValueError, match="b must have shape"):
        rops.rnade_log_prob(x, W, c, V, b[:, :, :2], order)
    with pytest.raises(ValueError, match="u must have shape"):
        rops.rnade_sample(W, c, V, b, order, torch.rand(5, 10))
    with pytest.raises(ValueError, match="x must be finite"):
        EXT.nade_forward(2, x / 0, W, c, V, b, order)


@needs_variants
def test_variants_custom_ops_and_compile():
    W, c, V, b, order = categorical_params(6, 5, 3, torch.float64)
    x = torch.randint(0, 3, (4, 5))
    torch.library.opcheck(OPS["categorical_nade"].forward, (x, W.requires_grad_(), c, V, b, order, "cpp"))
    torch.library.opcheck(OPS["categorical_nade"].sample, (W.detach(), c, V, b, order, torch.rand(3, 5, dtype=torch.float64), "cpp"))
    W, c, V, b, order = rnade_params(6, 5, 2, torch.float64)
    xr = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(OPS["rnade"].forward, (xr, W.requires_grad_(), c, V, b, order, "cpp"))
    torch.library.opcheck(OPS["rnade"].sample, (W.detach(), c, V, b, order, torch.rand(3, 5, 2, dtype=torch.float64),
                                            "cpp"))

    def loss(x, W, c, V, b):
        return -rops.rnade_log_prob(x, W, c, V, b, order).mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    a1 = [t.detach().clone().requires_grad_() for t in (xr, W, c, V, b)]
    a2 = [t.detach().clone().requires_grad_() for t in (xr, W, c, V, b)]
    l1, l2 = compiled(*a1), loss(*a2)
    torch.testing.assert_close(l1, l2)
    for g1, g2 in zip(torch.autograd.grad(l1, a1), torch.autograd.grad(l2, a2)):
        torch.testing.assert_close(g1, g2)


@needs_variants
def test_variants_backward_deterministic_across_threads():
    W, c, V, b, order = rnade_params(300, 12, 2, torch.float32, seed=5)
    x = torch.randn(10, 12)
    lp, p = EXT.nade_forward(2, x, W, c, V, b, order)
    g = torch.randn(10)
    old = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(EXT.nade_backward(2, g, None, x, W, c, V, b, order, p))
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(a, b_) for a, b_ in zip(outs[0], outs[1]))
