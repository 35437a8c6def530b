"""NADE backend internals, Triton kernels at launcher level, categorical NADE and RNADE (binary
NADE: test_nade_internals_triton.py; helpers and tolerances: nade_internals_helpers.py)."""
from __future__ import annotations

import itertools

import pytest
import torch

from armodel_fast.kernels import categorical_nade_triton as ct
from armodel_fast.kernels import rnade_triton as rt
from armodel_fast.reference import categorical_nade as cref
from armodel_fast.reference import rnade as rref
from nade_internals_helpers import DEVICE, LOW, check_grads, close, gen, near_tie_rows, randn, ref_grads


# ==== categorical NADE and RNADE (Triton) =============================================================
# Triton categorical NADE and RNADE kernels against the reference (binary:
# the binary Triton section; tolerances: Part 2 helpers): log-prob and
# per-dimension outputs, every gradient, samples from the same uniforms, fp16 /
# bf16, extreme weights, bad input. Under the Triton interpreter without a GPU.


# ---------------------------------------------------------------------------
# Categorical NADE
# ---------------------------------------------------------------------------

# (B, D, H, K, block_b, block_k): block_k < K runs the chunked (online logsumexp) path.
CAT_SHAPES = [(1, 1, 3, 3, None, None), (7, 5, 11, 5, 4, 2), (9, 6, 20, 4, 4, None), (4, 3, 5, 1, 2, None),
              (5, 4, 6, 7, None, 4)]


def _categorical(B, D, H, K, seed, dtype=torch.float32, scale=1.0):
    g = gen(seed)
    W, c = randn(H, D, K, g=g, scale=scale, dtype=dtype), randn(H, g=g, scale=scale, dtype=dtype)
    V, b = randn(D, K, H, g=g, scale=scale, dtype=dtype), randn(D, K, g=g, scale=scale, dtype=dtype)
    x = torch.randint(0, K, (B, D), generator=g).to(DEVICE)
    return x, (W, c, V, b), torch.randperm(D, generator=g)


@pytest.mark.parametrize("B,D,H,K,block_b,block_k", CAT_SHAPES)
def test_categorical_forward_backward_fp32(B, D, H, K, block_b, block_k):
    x, params, order = _categorical(B, D, H, K, seed=B * 100 + D)
    blocks = dict(block_b=block_b, block_k=block_k)
    lp, logits = ct.categorical_nade_forward(x, *params, order, **blocks)
    assert lp.dtype == logits.dtype == torch.float32 and logits.shape == (B, D, K)
    grad = torch.randn(B, generator=gen(1)).to(DEVICE)
    ref_lp, leaves = ref_grads(cref.categorical_nade_log_prob, x, params, order, grad)
    close(lp, ref_lp, 2e-6 * D, 1e-5, "log_prob vs fp64")
    close(lp, cref.categorical_nade_log_prob(x.cpu(), *[p.cpu() for p in params], order),
           2e-6 * D, 1e-5, "log_prob vs fp32")
    close(logits, cref.categorical_nade_logits_loop(x.cpu(), *[p.cpu().double() for p in params], order),
           1e-5, 1e-5, "logits")
    got = ct.categorical_nade_backward(grad, x, *params, order, logits, **blocks)
    check_grads(got, leaves, torch.float32, "categorical fp32")


@pytest.mark.parametrize("dtype", LOW)
def test_categorical_low_precision(dtype):
    B, D, H, K = 9, 5, 13, 3
    x, params, order = _categorical(B, D, H, K, seed=3, dtype=dtype)
    lp, logits = ct.categorical_nade_forward(x, *params, order, block_b=4, block_k=2)
    grad = torch.randn(B, generator=gen(2)).to(DEVICE)
    ref_lp, leaves = ref_grads(cref.categorical_nade_log_prob, x, params, order, grad)
    close(lp, ref_lp, 2e-6 * D, 1e-5, f"log_prob {dtype}")
    check_grads(ct.categorical_nade_backward(grad, x, *params, order, logits), leaves, dtype,
                 f"categorical {dtype}")
    u = torch.rand(B, D, generator=gen(4)).to(DEVICE)
    xs, slp = ct.categorical_nade_sample(*params, order, u)
    close(slp, ct.categorical_nade_forward(xs, *params, order)[0], 1e-5, 1e-5, "sample log_prob")


def test_categorical_probabilities_sum_to_one():
    D, H, K = 4, 5, 3
    _, params, order = _categorical(1, D, H, K, seed=2)
    grid = torch.tensor(list(itertools.product(range(K), repeat=D)), device=DEVICE)
    lp, _ = ct.categorical_nade_forward(grid, *params, order, block_k=2)
    assert abs(torch.exp(lp.double()).sum().item() - 1) < 1e-5


def _categorical_ties(u, logits):
    cdf = torch.cumsum(torch.softmax(logits, -1), -1)[..., :-1]
    return near_tie_rows(u.unsqueeze(-1), cdf)


@pytest.mark.parametrize("B,D,H,K,block_b,block_k", CAT_SHAPES)
def test_triton_categorical_sample_matches_reference(B, D, H, K, block_b, block_k):
    _, params, order = _categorical(1, D, H, K, seed=B + 7 * D)
    n = max(B, 5)
    u = torch.rand(n, D, generator=gen(D)).to(DEVICE)
    x, lp = ct.categorical_nade_sample(*params, order, u, block_b=block_b, block_k=block_k)
    assert x.dtype == torch.int64
    p64 = [p.cpu().double() for p in params]
    rx, rlp = cref.categorical_nade_sample(*p64, order, u.cpu().double())
    tie = _categorical_ties(u.cpu().double(), cref.categorical_nade_logits_loop(rx, *p64, order))
    assert tie.sum() <= 1, "too many near-ties: pick another seed"
    keep = ~tie
    assert torch.equal(x.cpu()[keep], rx[keep])
    close(lp.cpu()[keep], rlp[keep], 2e-6 * D, 1e-5, "sample log_prob")


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
def test_categorical_extreme_weights_are_finite():
    B, D, H, K = 6, 4, 7, 3
    x, (W, c, V, b), order = _categorical(B, D, H, K, seed=5)
    params = (W * 50.0, c, torch.sign(V) * 40.0, torch.sign(b) * 80.0)
    lp, logits = ct.categorical_nade_forward(x, *params, order, block_k=2)
    assert torch.isfinite(lp).all() and torch.isfinite(logits).all() and logits.abs().max() > 70
    grad = torch.ones(B).to(DEVICE)
    ref_lp, leaves = ref_grads(cref.categorical_nade_log_prob, x, params, order, grad)
    close(lp, ref_lp, 1e-4, 1e-5, "extreme log_prob")
    got = ct.categorical_nade_backward(grad, x, *params, order, logits, block_k=2)
    for name, g, p in zip("W c V b".split(), got, leaves):
        close(g, p.grad, 1e-3 * max(1.0, p.grad.abs().max().item()), 1e-4, f"extreme d{name}")
    xs, slp = ct.categorical_nade_sample(*params, order, torch.rand(B, D, generator=gen(0)).to(DEVICE))
    assert torch.isfinite(slp).all() and ((xs >= 0) & (xs < K)).all()


def test_categorical_launcher_rejects_bad_input():
    x, (W, c, V, b), order = _categorical(3, 4, 5, 3, seed=0)
    with pytest.raises(TypeError, match="x must have dtype"):
        ct.categorical_nade_forward(x.float(), W, c, V, b, order)
    with pytest.raises(ValueError, match="V must have shape"):
        ct.categorical_nade_forward(x, W, c, V.transpose(1, 2).contiguous(), b, order)
    with pytest.raises(ValueError, match="logits must have shape"):
        ct.categorical_nade_backward(torch.ones(3), x, W, c, V, b, order, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="block_k must be a power of 2"):
        ct.categorical_nade_forward(x, W, c, V, b, order, block_k=3)


# ---------------------------------------------------------------------------
# RNADE
# ---------------------------------------------------------------------------

# (B, D, H, K, block_b, block_k)
RN_SHAPES = [(1, 1, 3, 1, None, None), (7, 5, 11, 3, 4, 2), (6, 6, 20, 2, 4, 1), (5, 4, 6, 5, None, 4)]


def _rnade(B, D, H, K, seed, dtype=torch.float32, scale=0.4):
    g = gen(seed)
    W, c = randn(H, D, g=g, scale=scale, dtype=dtype), randn(H, g=g, scale=scale, dtype=dtype)
    V = randn(D, 3, K, H, g=g, scale=scale, dtype=dtype)
    b = randn(D, 3, K, g=g, scale=scale, dtype=dtype)
    x = randn(B, D, g=g, dtype=dtype)
    return x, (W, c, V, b), torch.randperm(D, generator=g)


@pytest.mark.parametrize("B,D,H,K,block_b,block_k", RN_SHAPES)
def test_rnade_forward_backward_fp32(B, D, H, K, block_b, block_k):
    x, params, order = _rnade(B, D, H, K, seed=B * 100 + D)
    blocks = dict(block_b=block_b, block_k=block_k)
    lp, p = rt.rnade_forward(x, *params, order, **blocks)
    assert lp.dtype == p.dtype == torch.float32 and p.shape == (B, D, 3, K)
    grad = torch.randn(B, generator=gen(1)).to(DEVICE)
    ref_lp, leaves = ref_grads(rref.rnade_log_prob, x, params, order, grad, x_grad=True)
    close(lp, ref_lp, 4e-6 * D, 1e-5, "log_prob vs fp64")
    close(lp, rref.rnade_log_prob(x.cpu(), *[q.cpu() for q in params], order), 4e-6 * D, 1e-5,
           "log_prob vs fp32")
    close(p, rref.rnade_params_loop(x.cpu().double(), *[q.cpu().double() for q in params], order),
           1e-5, 1e-5, "params")
    got = rt.rnade_backward(grad, x, *params, order, p, **blocks)
    check_grads(got, leaves, torch.float32, "rnade fp32", names=("W", "c", "V", "b", "x"))


@pytest.mark.parametrize("dtype", LOW)
def test_rnade_low_precision(dtype):
    B, D, H, K = 6, 4, 13, 3
    x, params, order = _rnade(B, D, H, K, seed=3, dtype=dtype)
    lp, p = rt.rnade_forward(x, *params, order, block_b=4, block_k=2)
    grad = torch.randn(B, generator=gen(2)).to(DEVICE)
    ref_lp, leaves = ref_grads(rref.rnade_log_prob, x, params, order, grad, x_grad=True)
    close(lp, ref_lp, 4e-6 * D, 1e-5, f"log_prob {dtype}")
    check_grads(rt.rnade_backward(grad, x, *params, order, p), leaves, dtype, f"rnade {dtype}",
                 names=("W", "c", "V", "b", "x"))
    u = torch.rand(B, D, 2, generator=gen(4)).to(DEVICE)
    xs, slp = rt.rnade_sample(*params, order, u)
    assert xs.dtype == dtype
    close(slp, rt.rnade_forward(xs, *params, order)[0], 1e-5 * D, 1e-5, "sample log_prob vs forward")


@pytest.mark.parametrize("B,D,H,K,block_b,block_k", RN_SHAPES)
def test_triton_rnade_sample_matches_reference(B, D, H, K, block_b, block_k):
    _, params, order = _rnade(1, D, H, K, seed=B + 7 * D)
    n = max(B, 5)
    u = torch.rand(n, D, 2, generator=gen(D)).to(DEVICE)
    x, lp = rt.rnade_sample(*params, order, u, block_b=block_b, block_k=block_k)
    p64 = [q.cpu().double() for q in params]
    rx, rlp = rref.rnade_sample(*p64, order, u.cpu().double())
    tie = _categorical_ties(u[..., 0].cpu().double(), rref.rnade_params_loop(rx, *p64, order)[:, :, 0])
    assert tie.sum() <= 1, "too many near-ties: pick another seed"
    keep = ~tie
    close(x.cpu()[keep], rx[keep], 1e-5, 1e-5, "samples")
    close(lp.cpu()[keep], rlp[keep], 1e-5 * D, 1e-5, "sample log_prob")
    close(lp, rt.rnade_forward(x, *params, order)[0], 1e-5 * D, 1e-5, "sample log_prob vs forward")


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
def test_rnade_extreme_weights_are_finite():
    B, D, H, K = 6, 4, 7, 3
    x, (W, c, V, b), order = _rnade(B, D, H, K, seed=5)
    V, b = V.clone(), b.clone()
    V[:, 0], b[:, 0] = torch.sign(V[:, 0]) * 40.0, torch.sign(b[:, 0]) * 80.0   # mixture logits ~ +-80
    params = (W * 100.0, c, V, b)
    lp, p = rt.rnade_forward(x, *params, order, block_k=2)
    assert torch.isfinite(lp).all() and torch.isfinite(p).all() and p[:, :, 0].abs().max() > 70
    grad = torch.ones(B).to(DEVICE)
    ref_lp, leaves = ref_grads(rref.rnade_log_prob, x, params, order, grad, x_grad=True)
    close(lp, ref_lp, 1e-4, 1e-5, "extreme log_prob")
    got = rt.rnade_backward(grad, x, *params, order, p, block_k=2)
    for name, g, q in zip("W c V b x".split(), got, leaves):
        close(g, q.grad, 1e-3 * max(1.0, q.grad.abs().max().item()), 1e-4, f"extreme d{name}")
    xs, slp = rt.rnade_sample(*params, order, torch.rand(B, D, 2, generator=gen(0)).to(DEVICE))
    assert torch.isfinite(slp).all() and torch.isfinite(xs).all()


def test_rnade_launcher_rejects_bad_input():
    x, (W, c, V, b), order = _rnade(3, 4, 5, 2, seed=0)
    with pytest.raises(ValueError, match="u must have shape"):
        rt.rnade_sample(W, c, V, b, order, torch.rand(3, 4))
    with pytest.raises(ValueError, match="b must have shape"):
        rt.rnade_forward(x, W, c, V, b[:, :2].contiguous(), order)
    with pytest.raises(ValueError, match="params must have shape"):
        rt.rnade_backward(torch.ones(3), x, W, c, V, b, order, torch.zeros(3, 4, 3, 3))
