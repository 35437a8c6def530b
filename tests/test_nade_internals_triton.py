"""NADE backend internals, Triton kernels at launcher level, binary NADE (categorical NADE and
RNADE: test_nade_internals_triton_variants.py; helpers and tolerances: nade_internals_helpers.py)."""
from __future__ import annotations

import itertools

import pytest
import torch

from armodel_fast.kernels import nade_triton as nt
from armodel_fast.reference import nade as ref
from nade_internals_helpers import DEVICE, LOW, check_grads, close, gen, near_tie_rows, randn, ref_grads


# ==== binary NADE (Triton) ============================================================================
# Triton binary NADE kernels against the reference (categorical NADE and RNADE:
# the categorical/RNADE Triton section; tolerances: Part 2 helpers).
#
# Without a GPU the kernels run under the Triton interpreter on CPU tensors
# (TRITON_INTERPRET=1, set before triton is imported), so shapes stay small.
# Each launcher is compared with the reference in fp64 (and fp32 for the
# parameter dtype fp32): log-prob, per-dimension outputs, every gradient, and
# samples drawn from the same uniforms.


# (B, D, H, block_b): B=1, D=1, H not a power of 2, B not a multiple of block_b.
TRITON_SHAPES = [(1, 1, 3, None), (7, 5, 11, 4), (1, 9, 20, None), (13, 12, 16, 4), (6, 8, 1, 2)]


# ---------------------------------------------------------------------------
# Binary NADE
# ---------------------------------------------------------------------------


def _binary(B, D, H, seed, dtype=torch.float32, scale=1.0):
    g = gen(seed)
    W, c = randn(H, D, g=g, scale=scale, dtype=dtype), randn(H, g=g, scale=scale, dtype=dtype)
    V, b = randn(D, H, g=g, scale=scale, dtype=dtype), randn(D, g=g, scale=scale, dtype=dtype)
    x = (torch.rand(B, D, generator=g) < 0.5).to(dtype).to(DEVICE)
    return x, (W, c, V, b), torch.randperm(D, generator=g)


@pytest.mark.parametrize("B,D,H,block_b", TRITON_SHAPES)
def test_binary_forward_backward_fp32(B, D, H, block_b):
    x, params, order = _binary(B, D, H, seed=B * 100 + D)
    lp, logits = nt.nade_forward(x, *params, order, block_b=block_b)
    assert lp.dtype == logits.dtype == torch.float32 and logits.shape == (B, D)
    grad = torch.randn(B, generator=gen(1)).to(DEVICE)
    ref_lp, leaves = ref_grads(ref.nade_log_prob, x, params, order, grad)
    tol = 2e-6 * D
    close(lp, ref_lp, tol, 1e-5, "log_prob vs fp64")
    close(lp, ref.nade_log_prob(x.cpu(), *[p.cpu() for p in params], order), tol, 1e-5, "log_prob vs fp32")
    close(logits, ref.nade_logits_loop(x.cpu().double(), *[p.cpu().double() for p in params], order),
           1e-5, 1e-5, "logits")
    got = nt.nade_backward(grad, x, *params, order, logits, block_b=block_b)
    check_grads(got, leaves, torch.float32, "binary fp32")


@pytest.mark.parametrize("dtype", LOW)
def test_binary_low_precision(dtype):
    B, D, H = 9, 7, 13
    x, params, order = _binary(B, D, H, seed=3, dtype=dtype)
    lp, logits = nt.nade_forward(x, *params, order, block_b=4)
    grad = torch.randn(B, generator=gen(2)).to(DEVICE)
    ref_lp, leaves = ref_grads(ref.nade_log_prob, x, params, order, grad)
    close(lp, ref_lp, 2e-6 * D, 1e-5, f"log_prob {dtype}")
    check_grads(nt.nade_backward(grad, x, *params, order, logits), leaves, dtype, f"binary {dtype}")
    u = torch.rand(B, D, generator=gen(4)).to(DEVICE)
    xs, slp = nt.nade_sample(*params, order, u)
    assert xs.dtype == dtype
    close(slp, nt.nade_forward(xs, *params, order)[0], 1e-5, 1e-5, "sample log_prob")


def test_binary_probabilities_sum_to_one():
    D, H = 8, 6
    _, params, order = _binary(1, D, H, seed=11)
    grid = torch.tensor(list(itertools.product([0.0, 1.0], repeat=D)), device=DEVICE)
    lp, _ = nt.nade_forward(grid, *params, order)
    assert abs(torch.exp(lp.double()).sum().item() - 1) < 1e-5


@pytest.mark.parametrize("B,D,H,block_b", TRITON_SHAPES)
def test_triton_binary_sample_matches_reference(B, D, H, block_b):
    _, params, order = _binary(1, D, H, seed=B + 7 * D)
    n = max(B, 5)
    u = torch.rand(n, D, generator=gen(D)).to(DEVICE)
    x, lp = nt.nade_sample(*params, order, u, block_b=block_b)
    p64 = [p.cpu().double() for p in params]
    rx, rlp = ref.nade_sample(*p64, order, u.cpu().double())
    tie = near_tie_rows(u.cpu().double(), torch.sigmoid(ref.nade_logits_loop(rx, *p64, order)))
    assert tie.sum() <= 1, "too many near-ties: pick another seed"
    keep = ~tie
    assert torch.equal(x.cpu()[keep].double(), rx[keep])
    close(lp.cpu()[keep], rlp[keep], 2e-6 * D, 1e-5, "sample log_prob")
    close(lp, nt.nade_forward(x, *params, order)[0], 1e-6 * D, 1e-5, "sample log_prob vs forward")


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # sigmoid(-huge) = 1/inf = 0
def test_binary_extreme_weights_are_finite():
    B, D, H = 6, 5, 7
    x, (W, c, V, b), order = _binary(B, D, H, seed=5)
    V = torch.sign(V) * 40.0                      # |logit| up to ~80
    b = torch.sign(b) * 80.0
    W = W * 50.0                                  # saturated hidden units
    params = (W, c, V, b)
    lp, logits = nt.nade_forward(x, *params, order)
    assert torch.isfinite(lp).all() and torch.isfinite(logits).all()
    assert logits.abs().max() > 70
    grad = torch.ones(B).to(DEVICE)
    ref_lp, leaves = ref_grads(ref.nade_log_prob, x, params, order, grad)
    close(lp, ref_lp, 1e-4, 1e-5, "extreme log_prob")
    got = nt.nade_backward(grad, x, *params, order, logits)
    assert all(torch.isfinite(g).all() for g in got)
    for name, g, p in zip("W c V b".split(), got, leaves):
        close(g, p.grad, 1e-3 * max(1.0, p.grad.abs().max().item()), 1e-4, f"extreme d{name}")
    u = torch.rand(B, D, generator=gen(0)).to(DEVICE)
    xs, slp = nt.nade_sample(*params, order, u)
    assert torch.isfinite(slp).all()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
def test_binary_backward_rebuild_does_not_drift_at_mnist_size():
    """D=784 steps of a -= W[:, d] x_d in fp32, |a| up to ~60: gradients stay within 1e-4 relative."""
    B, D, H = 4, 784, 32
    x, (W, c, V, b), order = _binary(B, D, H, seed=0)
    params = (W * 3.0, c, V, b)
    lp, logits = nt.nade_forward(x, *params, order)
    _, leaves = ref_grads(ref.nade_log_prob, x, params, order, torch.ones(B))
    got = nt.nade_backward(torch.ones(B).to(DEVICE), x, *params, order, logits)
    for name, g, p in zip("W c V b".split(), got, leaves):
        close(g, p.grad, 1e-4 * p.grad.abs().max().item(), 1e-4, f"drift d{name}")


def test_binary_launcher_rejects_bad_input(monkeypatch):
    x, (W, c, V, b), order = _binary(3, 4, 5, seed=0)
    with pytest.raises(TypeError, match="c has dtype"):
        nt.nade_forward(x, W, c.half(), V, b, order)
    with pytest.raises(TypeError, match="W must have dtype"):
        nt.nade_forward(x.double(), W.double(), c.double(), V.double(), b.double(), order)
    with pytest.raises(ValueError, match="V must have shape"):
        nt.nade_forward(x, W, c, V.t(), b, order)
    with pytest.raises(ValueError, match="x must be contiguous"):
        nt.nade_forward(torch.cat([x, x], 1)[:, ::2], W, c, V, b, order)
    with pytest.raises(ValueError, match="order must be a permutation"):
        nt.nade_forward(x, W, c, V, b, torch.tensor([0, 0, 1, 2]))
    with pytest.raises(TypeError, match="order must hold integers"):
        nt.nade_forward(x, W, c, V, b, order.float())
    with pytest.raises(ValueError, match="u must have shape"):
        nt.nade_sample(W, c, V, b, order, torch.rand(3, 5))
    with pytest.raises(ValueError, match="grad must have shape"):
        nt.nade_backward(torch.ones(4), x, W, c, V, b, order, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="block_b must be a power of 2"):
        nt.nade_forward(x, W, c, V, b, order, block_b=3)
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="need CUDA tensors"):
            nt.nade_forward(x, W, c, V, b, order)


def test_binary_empty_batch():
    x, params, order = _binary(0, 4, 5, seed=0)
    lp, logits = nt.nade_forward(x, *params, order)
    assert lp.shape == (0,) and logits.shape == (0, 4)
    dW, dc, dV, db = nt.nade_backward(torch.zeros(0), x, *params, order, logits)
    assert not dW.any() and not db.any()
