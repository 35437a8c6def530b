"""Triton NADE kernels (binary, categorical, RNADE) against the reference.

Without a GPU the kernels run under the Triton interpreter on CPU tensors
(TRITON_INTERPRET=1, set before triton is imported), so shapes stay small.
Each launcher is compared with the reference in fp64 (and fp32 for the
parameter dtype fp32): log-prob, per-dimension outputs, every gradient, and
samples drawn from the same uniforms.

Tolerances. The kernels compute in fp32 from the exact (upcast) input values,
so log-probs and logits agree with the fp64 reference to fp32 rounding, scaled
by D (sums of D terms) - also for fp16/bf16 inputs. Gradients are accumulated
in fp32 and rounded to the parameter dtype at the end: fp32 atol/rtol 1e-5
(x the gradient's scale), fp16 2e-3, bf16 1.6e-2 (twice the dtype's unit
roundoff).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import itertools  # noqa: E402

import pytest  # noqa: E402

from armodel_fast.kernels import categorical_nade_triton as ct  # noqa: E402
from armodel_fast.kernels import nade_triton as nt  # noqa: E402
from armodel_fast.kernels import rnade_triton as rt  # noqa: E402
from armodel_fast.reference import categorical_nade as cref  # noqa: E402
from armodel_fast.reference import nade as ref  # noqa: E402
from armodel_fast.reference import rnade as rref  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRAD_RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
LOW = [torch.float16, torch.bfloat16]
# (B, D, H, block_b): B=1, D=1, H not a power of 2, B not a multiple of block_b.
SHAPES = [(1, 1, 3, None), (7, 5, 11, 4), (1, 9, 20, None), (13, 12, 16, 4), (6, 8, 1, 2)]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, g, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)


def _close(actual, expected, atol, rtol, what):
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), atol=atol, rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


def _check_grads(got, params, dtype, what, names=("W", "c", "V", "b")):
    for name, g, p in zip(names, got, params):
        assert g.dtype == dtype and g.shape == p.shape, f"{what} d{name}: {g.dtype} {tuple(g.shape)}"
        expected = torch.zeros_like(p) if p.grad is None else p.grad  # D=1: W is never used
        scale = max(1.0, expected.abs().max().item())
        r = GRAD_RTOL[dtype]
        _close(g, expected, atol=r * scale, rtol=r, what=f"{what} d{name}")


def _ref_grads(fn, x, params, order, grad, x_grad=False):
    """Reference log_prob (fp64) and the autograd leaves of sum(grad * log_prob) (+ x last)."""
    leaves = [p.detach().double().cpu().requires_grad_() for p in params]
    xx = x.cpu().double().requires_grad_(x_grad) if x.dtype.is_floating_point else x.cpu()
    lp = fn(xx, *leaves, order.cpu())
    (lp * grad.double().cpu()).sum().backward()
    return lp.detach(), leaves + ([xx] if x_grad else [])


def _near_tie_rows(u, p, eps=1e-5):
    """Rows where some uniform lies within eps of the probability it is compared with."""
    return ((u - p).abs() < eps).flatten(1).any(1)


# ---------------------------------------------------------------------------
# Binary NADE
# ---------------------------------------------------------------------------


def _binary(B, D, H, seed, dtype=torch.float32, scale=1.0):
    g = _gen(seed)
    W, c = _randn(H, D, g=g, scale=scale, dtype=dtype), _randn(H, g=g, scale=scale, dtype=dtype)
    V, b = _randn(D, H, g=g, scale=scale, dtype=dtype), _randn(D, g=g, scale=scale, dtype=dtype)
    x = (torch.rand(B, D, generator=g) < 0.5).to(dtype).to(DEVICE)
    return x, (W, c, V, b), torch.randperm(D, generator=g)


@pytest.mark.parametrize("B,D,H,block_b", SHAPES)
def test_binary_forward_backward_fp32(B, D, H, block_b):
    x, params, order = _binary(B, D, H, seed=B * 100 + D)
    lp, logits = nt.nade_forward(x, *params, order, block_b=block_b)
    assert lp.dtype == logits.dtype == torch.float32 and logits.shape == (B, D)
    grad = torch.randn(B, generator=_gen(1)).to(DEVICE)
    ref_lp, leaves = _ref_grads(ref.nade_log_prob, x, params, order, grad)
    tol = 2e-6 * D
    _close(lp, ref_lp, tol, 1e-5, "log_prob vs fp64")
    _close(lp, ref.nade_log_prob(x.cpu(), *[p.cpu() for p in params], order), tol, 1e-5, "log_prob vs fp32")
    _close(logits, ref.nade_logits_loop(x.cpu().double(), *[p.cpu().double() for p in params], order),
           1e-5, 1e-5, "logits")
    got = nt.nade_backward(grad, x, *params, order, logits, block_b=block_b)
    _check_grads(got, leaves, torch.float32, "binary fp32")


@pytest.mark.parametrize("dtype", LOW)
def test_binary_low_precision(dtype):
    B, D, H = 9, 7, 13
    x, params, order = _binary(B, D, H, seed=3, dtype=dtype)
    lp, logits = nt.nade_forward(x, *params, order, block_b=4)
    grad = torch.randn(B, generator=_gen(2)).to(DEVICE)
    ref_lp, leaves = _ref_grads(ref.nade_log_prob, x, params, order, grad)
    _close(lp, ref_lp, 2e-6 * D, 1e-5, f"log_prob {dtype}")
    _check_grads(nt.nade_backward(grad, x, *params, order, logits), leaves, dtype, f"binary {dtype}")
    u = torch.rand(B, D, generator=_gen(4)).to(DEVICE)
    xs, slp = nt.nade_sample(*params, order, u)
    assert xs.dtype == dtype
    _close(slp, nt.nade_forward(xs, *params, order)[0], 1e-5, 1e-5, "sample log_prob")


def test_binary_probabilities_sum_to_one():
    D, H = 8, 6
    _, params, order = _binary(1, D, H, seed=11)
    grid = torch.tensor(list(itertools.product([0.0, 1.0], repeat=D)), device=DEVICE)
    lp, _ = nt.nade_forward(grid, *params, order)
    assert abs(torch.exp(lp.double()).sum().item() - 1) < 1e-5


@pytest.mark.parametrize("B,D,H,block_b", SHAPES)
def test_binary_sample_matches_reference(B, D, H, block_b):
    _, params, order = _binary(1, D, H, seed=B + 7 * D)
    n = max(B, 5)
    u = torch.rand(n, D, generator=_gen(D)).to(DEVICE)
    x, lp = nt.nade_sample(*params, order, u, block_b=block_b)
    p64 = [p.cpu().double() for p in params]
    rx, rlp = ref.nade_sample(*p64, order, u.cpu().double())
    tie = _near_tie_rows(u.cpu().double(), torch.sigmoid(ref.nade_logits_loop(rx, *p64, order)))
    assert tie.sum() <= 1, "too many near-ties: pick another seed"
    keep = ~tie
    assert torch.equal(x.cpu()[keep].double(), rx[keep])
    _close(lp.cpu()[keep], rlp[keep], 2e-6 * D, 1e-5, "sample log_prob")
    _close(lp, nt.nade_forward(x, *params, order)[0], 1e-6 * D, 1e-5, "sample log_prob vs forward")


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
    ref_lp, leaves = _ref_grads(ref.nade_log_prob, x, params, order, grad)
    _close(lp, ref_lp, 1e-4, 1e-5, "extreme log_prob")
    got = nt.nade_backward(grad, x, *params, order, logits)
    assert all(torch.isfinite(g).all() for g in got)
    for name, g, p in zip("W c V b".split(), got, leaves):
        _close(g, p.grad, 1e-3 * max(1.0, p.grad.abs().max().item()), 1e-4, f"extreme d{name}")
    u = torch.rand(B, D, generator=_gen(0)).to(DEVICE)
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
    _, leaves = _ref_grads(ref.nade_log_prob, x, params, order, torch.ones(B))
    got = nt.nade_backward(torch.ones(B).to(DEVICE), x, *params, order, logits)
    for name, g, p in zip("W c V b".split(), got, leaves):
        _close(g, p.grad, 1e-4 * p.grad.abs().max().item(), 1e-4, f"drift d{name}")


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


# ---------------------------------------------------------------------------
# Categorical NADE
# ---------------------------------------------------------------------------

# (B, D, H, K, block_b, block_k): block_k < K runs the chunked (online logsumexp) path.
CAT_SHAPES = [(1, 1, 3, 3, None, None), (7, 5, 11, 5, 4, 2), (9, 6, 20, 4, 4, None), (4, 3, 5, 1, 2, None),
              (5, 4, 6, 7, None, 4)]


def _categorical(B, D, H, K, seed, dtype=torch.float32, scale=1.0):
    g = _gen(seed)
    W, c = _randn(H, D, K, g=g, scale=scale, dtype=dtype), _randn(H, g=g, scale=scale, dtype=dtype)
    V, b = _randn(D, K, H, g=g, scale=scale, dtype=dtype), _randn(D, K, g=g, scale=scale, dtype=dtype)
    x = torch.randint(0, K, (B, D), generator=g).to(DEVICE)
    return x, (W, c, V, b), torch.randperm(D, generator=g)


@pytest.mark.parametrize("B,D,H,K,block_b,block_k", CAT_SHAPES)
def test_categorical_forward_backward_fp32(B, D, H, K, block_b, block_k):
    x, params, order = _categorical(B, D, H, K, seed=B * 100 + D)
    blocks = dict(block_b=block_b, block_k=block_k)
    lp, logits = ct.categorical_nade_forward(x, *params, order, **blocks)
    assert lp.dtype == logits.dtype == torch.float32 and logits.shape == (B, D, K)
    grad = torch.randn(B, generator=_gen(1)).to(DEVICE)
    ref_lp, leaves = _ref_grads(cref.categorical_nade_log_prob, x, params, order, grad)
    _close(lp, ref_lp, 2e-6 * D, 1e-5, "log_prob vs fp64")
    _close(lp, cref.categorical_nade_log_prob(x.cpu(), *[p.cpu() for p in params], order),
           2e-6 * D, 1e-5, "log_prob vs fp32")
    _close(logits, cref.categorical_nade_logits_loop(x.cpu(), *[p.cpu().double() for p in params], order),
           1e-5, 1e-5, "logits")
    got = ct.categorical_nade_backward(grad, x, *params, order, logits, **blocks)
    _check_grads(got, leaves, torch.float32, "categorical fp32")


@pytest.mark.parametrize("dtype", LOW)
def test_categorical_low_precision(dtype):
    B, D, H, K = 9, 5, 13, 3
    x, params, order = _categorical(B, D, H, K, seed=3, dtype=dtype)
    lp, logits = ct.categorical_nade_forward(x, *params, order, block_b=4, block_k=2)
    grad = torch.randn(B, generator=_gen(2)).to(DEVICE)
    ref_lp, leaves = _ref_grads(cref.categorical_nade_log_prob, x, params, order, grad)
    _close(lp, ref_lp, 2e-6 * D, 1e-5, f"log_prob {dtype}")
    _check_grads(ct.categorical_nade_backward(grad, x, *params, order, logits), leaves, dtype,
                 f"categorical {dtype}")
    u = torch.rand(B, D, generator=_gen(4)).to(DEVICE)
    xs, slp = ct.categorical_nade_sample(*params, order, u)
    _close(slp, ct.categorical_nade_forward(xs, *params, order)[0], 1e-5, 1e-5, "sample log_prob")


def test_categorical_probabilities_sum_to_one():
    D, H, K = 4, 5, 3
    _, params, order = _categorical(1, D, H, K, seed=2)
    grid = torch.tensor(list(itertools.product(range(K), repeat=D)), device=DEVICE)
    lp, _ = ct.categorical_nade_forward(grid, *params, order, block_k=2)
    assert abs(torch.exp(lp.double()).sum().item() - 1) < 1e-5


def _categorical_ties(u, logits):
    cdf = torch.cumsum(torch.softmax(logits, -1), -1)[..., :-1]
    return _near_tie_rows(u.unsqueeze(-1), cdf)


@pytest.mark.parametrize("B,D,H,K,block_b,block_k", CAT_SHAPES)
def test_categorical_sample_matches_reference(B, D, H, K, block_b, block_k):
    _, params, order = _categorical(1, D, H, K, seed=B + 7 * D)
    n = max(B, 5)
    u = torch.rand(n, D, generator=_gen(D)).to(DEVICE)
    x, lp = ct.categorical_nade_sample(*params, order, u, block_b=block_b, block_k=block_k)
    assert x.dtype == torch.int64
    p64 = [p.cpu().double() for p in params]
    rx, rlp = cref.categorical_nade_sample(*p64, order, u.cpu().double())
    tie = _categorical_ties(u.cpu().double(), cref.categorical_nade_logits_loop(rx, *p64, order))
    assert tie.sum() <= 1, "too many near-ties: pick another seed"
    keep = ~tie
    assert torch.equal(x.cpu()[keep], rx[keep])
    _close(lp.cpu()[keep], rlp[keep], 2e-6 * D, 1e-5, "sample log_prob")


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
def test_categorical_extreme_weights_are_finite():
    B, D, H, K = 6, 4, 7, 3
    x, (W, c, V, b), order = _categorical(B, D, H, K, seed=5)
    params = (W * 50.0, c, torch.sign(V) * 40.0, torch.sign(b) * 80.0)
    lp, logits = ct.categorical_nade_forward(x, *params, order, block_k=2)
    assert torch.isfinite(lp).all() and torch.isfinite(logits).all() and logits.abs().max() > 70
    grad = torch.ones(B).to(DEVICE)
    ref_lp, leaves = _ref_grads(cref.categorical_nade_log_prob, x, params, order, grad)
    _close(lp, ref_lp, 1e-4, 1e-5, "extreme log_prob")
    got = ct.categorical_nade_backward(grad, x, *params, order, logits, block_k=2)
    for name, g, p in zip("W c V b".split(), got, leaves):
        _close(g, p.grad, 1e-3 * max(1.0, p.grad.abs().max().item()), 1e-4, f"extreme d{name}")
    xs, slp = ct.categorical_nade_sample(*params, order, torch.rand(B, D, generator=_gen(0)).to(DEVICE))
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
    g = _gen(seed)
    W, c = _randn(H, D, g=g, scale=scale, dtype=dtype), _randn(H, g=g, scale=scale, dtype=dtype)
    V = _randn(D, 3, K, H, g=g, scale=scale, dtype=dtype)
    b = _randn(D, 3, K, g=g, scale=scale, dtype=dtype)
    x = _randn(B, D, g=g, dtype=dtype)
    return x, (W, c, V, b), torch.randperm(D, generator=g)


@pytest.mark.parametrize("B,D,H,K,block_b,block_k", RN_SHAPES)
def test_rnade_forward_backward_fp32(B, D, H, K, block_b, block_k):
    x, params, order = _rnade(B, D, H, K, seed=B * 100 + D)
    blocks = dict(block_b=block_b, block_k=block_k)
    lp, p = rt.rnade_forward(x, *params, order, **blocks)
    assert lp.dtype == p.dtype == torch.float32 and p.shape == (B, D, 3, K)
    grad = torch.randn(B, generator=_gen(1)).to(DEVICE)
    ref_lp, leaves = _ref_grads(rref.rnade_log_prob, x, params, order, grad, x_grad=True)
    _close(lp, ref_lp, 4e-6 * D, 1e-5, "log_prob vs fp64")
    _close(lp, rref.rnade_log_prob(x.cpu(), *[q.cpu() for q in params], order), 4e-6 * D, 1e-5,
           "log_prob vs fp32")
    _close(p, rref.rnade_params_loop(x.cpu().double(), *[q.cpu().double() for q in params], order),
           1e-5, 1e-5, "params")
    got = rt.rnade_backward(grad, x, *params, order, p, **blocks)
    _check_grads(got, leaves, torch.float32, "rnade fp32", names=("W", "c", "V", "b", "x"))


@pytest.mark.parametrize("dtype", LOW)
def test_rnade_low_precision(dtype):
    B, D, H, K = 6, 4, 13, 3
    x, params, order = _rnade(B, D, H, K, seed=3, dtype=dtype)
    lp, p = rt.rnade_forward(x, *params, order, block_b=4, block_k=2)
    grad = torch.randn(B, generator=_gen(2)).to(DEVICE)
    ref_lp, leaves = _ref_grads(rref.rnade_log_prob, x, params, order, grad, x_grad=True)
    _close(lp, ref_lp, 4e-6 * D, 1e-5, f"log_prob {dtype}")
    _check_grads(rt.rnade_backward(grad, x, *params, order, p), leaves, dtype, f"rnade {dtype}",
                 names=("W", "c", "V", "b", "x"))
    u = torch.rand(B, D, 2, generator=_gen(4)).to(DEVICE)
    xs, slp = rt.rnade_sample(*params, order, u)
    assert xs.dtype == dtype
    _close(slp, rt.rnade_forward(xs, *params, order)[0], 1e-5 * D, 1e-5, "sample log_prob vs forward")


@pytest.mark.parametrize("B,D,H,K,block_b,block_k", RN_SHAPES)
def test_rnade_sample_matches_reference(B, D, H, K, block_b, block_k):
    _, params, order = _rnade(1, D, H, K, seed=B + 7 * D)
    n = max(B, 5)
    u = torch.rand(n, D, 2, generator=_gen(D)).to(DEVICE)
    x, lp = rt.rnade_sample(*params, order, u, block_b=block_b, block_k=block_k)
    p64 = [q.cpu().double() for q in params]
    rx, rlp = rref.rnade_sample(*p64, order, u.cpu().double())
    tie = _categorical_ties(u[..., 0].cpu().double(), rref.rnade_params_loop(rx, *p64, order)[:, :, 0])
    assert tie.sum() <= 1, "too many near-ties: pick another seed"
    keep = ~tie
    _close(x.cpu()[keep], rx[keep], 1e-5, 1e-5, "samples")
    _close(lp.cpu()[keep], rlp[keep], 1e-5 * D, 1e-5, "sample log_prob")
    _close(lp, rt.rnade_forward(x, *params, order)[0], 1e-5 * D, 1e-5, "sample log_prob vs forward")


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
    ref_lp, leaves = _ref_grads(rref.rnade_log_prob, x, params, order, grad, x_grad=True)
    _close(lp, ref_lp, 1e-4, 1e-5, "extreme log_prob")
    got = rt.rnade_backward(grad, x, *params, order, p, block_k=2)
    for name, g, q in zip("W c V b x".split(), got, leaves):
        _close(g, q.grad, 1e-3 * max(1.0, q.grad.abs().max().item()), 1e-4, f"extreme d{name}")
    xs, slp = rt.rnade_sample(*params, order, torch.rand(B, D, 2, generator=_gen(0)).to(DEVICE))
    assert torch.isfinite(slp).all() and torch.isfinite(xs).all()


def test_rnade_launcher_rejects_bad_input():
    x, (W, c, V, b), order = _rnade(3, 4, 5, 2, seed=0)
    with pytest.raises(ValueError, match="u must have shape"):
        rt.rnade_sample(W, c, V, b, order, torch.rand(3, 4))
    with pytest.raises(ValueError, match="b must have shape"):
        rt.rnade_forward(x, W, c, V, b[:, :2].contiguous(), order)
    with pytest.raises(ValueError, match="params must have shape"):
        rt.rnade_backward(torch.ones(3), x, W, c, V, b, order, torch.zeros(3, 4, 3, 3))
