"""NADE backend internals, C++ CPU kernels, binary NADE (the op-level checks over every backend
and dtype: test_nade.py; categorical NADE and RNADE: test_nade_internals_cpp_variants.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from armodel_fast.dispatch import BackendUnavailableError
from armodel_fast.ops.nade import OPS
from armodel_fast.reference import nade as ref
from nade_internals_helpers import EXT, HAS_BINARY, TIE, check_log_prob_and_grads, close_grads, needs_binary, tol


# ==== binary NADE (C++) ===============================================================================
# C++ CPU binary NADE kernels against the reference (categorical NADE and RNADE:
# the categorical/RNADE C++ section; tolerances: Part 1 helpers).
#
# Checked: log-probabilities and logits, every parameter gradient, samples drawn
# from the same uniforms (equal except in rows where some u lies within 1e-5 of
# the reference's own probability, which are excluded), fp64 gradcheck, extreme
# weights, bad input, torch.compile tracing, the other ISA builds, and
# determinism across thread counts.


if HAS_BINARY:
    from armodel_fast.ops import nade as nops


# ---------------------------------------------------------------- binary NADE

def binary_params(H, D, dtype, seed=0, w_scale=1.0, v_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(H, D, generator=g, dtype=dtype) * w_scale / D ** 0.5
    c = torch.randn(H, generator=g, dtype=dtype) * 0.5
    V = torch.randn(D, H, generator=g, dtype=dtype) * v_scale / H ** 0.5
    b = torch.randn(D, generator=g, dtype=dtype) * 0.5
    order = torch.randperm(D, generator=g)
    return W, c, V, b, order


def binary_x(B, D, dtype, seed=1, p=0.5):
    return (torch.rand(B, D, generator=torch.Generator().manual_seed(seed)) < p).to(dtype)


SHAPES = [  # (B, D, H): B and H not multiples of the row block / vector width, D = 1, B = 1
    (1, 1, 1), (3, 1, 5), (1, 9, 16), (5, 7, 13), (9, 50, 37), (6, 20, 64), (17, 33, 40), (4, 12, 100),
]


@needs_binary
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B, D, H", SHAPES)
def test_binary_log_prob_and_grads(B, D, H, dtype):
    W, c, V, b, order = binary_params(H, D, dtype, seed=B * 100 + D)
    x = binary_x(B, D, dtype, seed=H)
    check_log_prob_and_grads(ref.nade_logits_loop, ref.bernoulli_log_prob, nops.nade_log_prob, x, (W, c, V, b), order,
                             dtype)


@needs_binary
def test_binary_d784():
    B, D, H = 7, 784, 60
    W, c, V, b, order = binary_params(H, D, torch.float32, seed=7, w_scale=3.0)
    x = binary_x(B, D, torch.float32, p=0.3)
    leaves = [t.clone().requires_grad_() for t in (W, c, V, b)]
    ref_lp = ref.nade_log_prob(x, *leaves, order)
    want = torch.autograd.grad(ref_lp.sum(), leaves)
    params = [t.clone().requires_grad_() for t in (W, c, V, b)]
    lp = nops.nade_log_prob(x, *params, order)
    torch.testing.assert_close(lp, ref_lp.detach(), **tol(torch.float32, D)[1])
    close_grads(torch.autograd.grad(lp.sum(), params), want, "W c V b".split(), torch.float32)
    # The fp32 kernel is at least as close to the fp64 truth as the fp32 reference.
    truth = ref.nade_log_prob(x.double(), W.double(), c.double(), V.double(), b.double(), order)
    assert (lp.double() - truth).abs().max() <= 2 * (ref_lp.detach().double() - truth).abs().max() + 1e-4


def ties(u, p):
    """Rows where some u is within TIE of the reference's probability."""
    return ((u - p).abs() < TIE).any(dim=-1)


@needs_binary
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B, D, H", SHAPES + [(33, 784, 24)])
def test_binary_sample_matches_reference(B, D, H, dtype):
    W, c, V, b, order = binary_params(H, D, dtype, seed=D + H, w_scale=2.0, v_scale=3.0)
    u = torch.rand(B, D, generator=torch.Generator().manual_seed(5), dtype=dtype)
    x, lp = nops.nade_sample(W, c, V, b, order, u)
    xr, lpr = ref.nade_sample(W, c, V, b, order, u)
    keep = ~ties(u, torch.sigmoid(ref.nade_logits_loop(xr, W, c, V, b, order)))
    assert keep.float().mean() > 0.5
    assert torch.equal(x[keep], xr[keep])
    torch.testing.assert_close(lp[keep], lpr[keep], **tol(dtype, D)[1])
    # the returned log-probabilities are those of the returned samples
    torch.testing.assert_close(lp, nops.nade_log_prob(x, W, c, V, b, order), **tol(dtype, D)[1])


@needs_binary
def test_binary_gradcheck_fp64():
    W, c, V, b, order = binary_params(5, 4, torch.float64, seed=3, w_scale=2.0)
    x = binary_x(3, 4, torch.float64)
    params = [t.clone().requires_grad_() for t in (W, c, V, b)]

    def f(*p):
        lp, logits = nops.nade_log_prob(x, *p, order, return_logits=True)
        return lp, logits

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-8, rtol=1e-6)


@needs_binary
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_binary_extreme_weights(dtype):
    """Hidden pre-activations far outside the range where exp(-a) is carried, logits about +-80."""
    B, D, H = 9, 40, 24
    g = torch.Generator().manual_seed(0)
    big = 500.0 if dtype == torch.float64 else 60.0
    W = torch.randn(H, D, generator=g, dtype=dtype) * big
    c = torch.randn(H, generator=g, dtype=dtype) * big
    V = torch.randn(D, H, generator=g, dtype=dtype) * 80 / H ** 0.5
    b = torch.randn(D, generator=g, dtype=dtype)
    order = torch.randperm(D, generator=g)
    x = binary_x(B, D, dtype)
    params = [t.clone().requires_grad_() for t in (W, c, V, b)]
    lp, logits = nops.nade_log_prob(x, *params, order, return_logits=True)
    grads = torch.autograd.grad(lp.sum(), params)
    assert torch.isfinite(lp).all() and logits.abs().max() > 40
    assert all(torch.isfinite(gr).all() for gr in grads)
    # compare with the reference in float64 (exact saturation handling)
    p64 = [t.double().requires_grad_() for t in (W, c, V, b)]
    lp64 = ref.nade_log_prob(x.double(), *p64, order)
    want = torch.autograd.grad(lp64.sum(), p64)
    rel = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(lp.detach().double(), lp64.detach(), rtol=rel, atol=rel * float(lp64.detach().abs().max()))
    for gr, w in zip(grads, want):
        torch.testing.assert_close(gr.double(), w, rtol=rel, atol=rel * max(float(w.abs().max()), 1.0))
    u = torch.rand(B, D, generator=g, dtype=dtype)
    xs, lps = nops.nade_sample(W, c, V, b, order, u)
    assert torch.isfinite(lps).all()


@needs_binary
def test_binary_backward_deterministic_across_threads():
    W, c, V, b, order = binary_params(70, 30, torch.float32, seed=4)
    x = binary_x(23, 30, torch.float32)
    lp, logits = EXT.nade_forward(0, x, W, c, V, b, order)
    g = torch.randn(23)
    old = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            outs.append(EXT.nade_backward(0, g, None, x, W, c, V, b, order, logits)[:4])
    finally:
        torch.set_num_threads(old)
    for o in outs[1:]:
        assert all(torch.equal(a, b_) for a, b_ in zip(o, outs[0]))


# ---------------------------------------------------------------- errors

@needs_binary
def test_binary_bad_inputs():
    W, c, V, b, order = binary_params(6, 5, torch.float32)
    x = binary_x(3, 5, torch.float32)
    with pytest.raises(ValueError, match="x must be binary"):
        nops.nade_log_prob(x + 0.5, W, c, V, b, order)
    with pytest.raises(ValueError, match="x must have shape"):
        nops.nade_log_prob(x[:, :4], W, c, V, b, order)
    with pytest.raises(TypeError, match="W must be a floating-point"):
        nops.nade_log_prob(x, W.long(), c, V, b, order)
    with pytest.raises(TypeError, match="W must be float32 or float64"):
        nops.nade_log_prob(x, W.half(), c.half(), V.half(), b.half(), order)
    with pytest.raises(TypeError, match="b must have the same dtype"):
        nops.nade_log_prob(x, W, c, V, b.double(), order)
    with pytest.raises(ValueError, match="V must have shape"):
        nops.nade_log_prob(x, W, c, V.t(), b, order)
    with pytest.raises(ValueError, match="c must have shape"):
        nops.nade_log_prob(x, W, c[:5], V, b, order)
    with pytest.raises(ValueError, match="order"):
        nops.nade_log_prob(x, W, c, V, b, torch.tensor([0, 1, 2, 3, 3]))
    with pytest.raises(TypeError, match="order"):
        nops.nade_log_prob(x, W, c, V, b, order.float())
    with pytest.raises(TypeError, match="W must be a torch.Tensor"):
        nops.nade_log_prob(x, W.tolist(), c, V, b, order)
    with pytest.raises(ValueError, match="u must hold uniforms"):
        nops.nade_sample(W, c, V, b, order, torch.full((2, 5), 1.5))
    with pytest.raises(ValueError, match="u must have shape"):
        nops.nade_sample(W, c, V, b, order, torch.rand(2, 4))
    with pytest.raises(ValueError, match="backend"):
        nops.nade_log_prob(x, W, c, V, b, order, backend="fortran")
    with pytest.raises(TypeError, match="return_logits"):
        nops.nade_log_prob(x, W, c, V, b, order, return_logits=1)


@needs_binary
def test_binary_cpp_launchers_validate_too():
    """The C++ launchers raise named errors themselves (what compiled code relies on)."""
    W, c, V, b, order = binary_params(6, 5, torch.float32)
    x = binary_x(3, 5, torch.float32)
    with pytest.raises(ValueError, match="x must be binary"):
        EXT.nade_forward(0, x * 2, W, c, V, b, order)
    with pytest.raises(ValueError, match="order"):
        EXT.nade_forward(0, x, W, c, V, b, torch.tensor([0, 1, 2, 3, 3]))
    with pytest.raises(TypeError, match="V must have the same dtype"):
        EXT.nade_forward(0, x, W, c, V.double(), b, order)
    with pytest.raises(ValueError, match="W must be contiguous"):
        EXT.nade_forward(0, x, W.t().contiguous().t(), c, V, b, order)
    with pytest.raises(TypeError, match="W must be float32 or float64"):
        EXT.nade_forward(0, x.half(), W.half(), c.half(), V.half(), b.half(), order)
    with pytest.raises(ValueError, match="u must hold uniforms"):
        EXT.nade_sample(0, W, c, V, b, order, -torch.rand(2, 5))
    with pytest.raises(ValueError, match="grad must have shape"):
        EXT.nade_backward(0, torch.ones(2), None, x, W, c, V, b, order, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="outputs must have shape"):
        EXT.nade_backward(0, torch.ones(3), None, x, W, c, V, b, order, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="kind must be one of 0 \\(binary\\)"):
        EXT.nade_forward(3, x, W, c, V, b, order)


@needs_binary
def test_backend_reference_and_unknown():
    W, c, V, b, order = binary_params(6, 5, torch.float64)
    x = binary_x(3, 5, torch.float64)
    torch.testing.assert_close(nops.nade_log_prob(x, W, c, V, b, order, backend="reference"),
                               nops.nade_log_prob(x, W, c, V, b, order, backend="cpp"))
    from armodel_fast import dispatch
    with pytest.raises(BackendUnavailableError, match="no 'fortran' kernel"):
        dispatch.launcher("nade", "forward", "fortran")


# ---------------------------------------------------------------- torch.compile, custom ops

@needs_binary
def test_binary_custom_ops_opcheck():
    W, c, V, b, order = binary_params(6, 5, torch.float64)
    x = binary_x(3, 5, torch.float64)
    params = [t.clone().requires_grad_() for t in (W, c, V, b)]
    torch.library.opcheck(OPS["nade"].forward, (x, *params, order, "cpp"))
    lp, logits = EXT.nade_forward(0, x, W, c, V, b, order)
    torch.library.opcheck(OPS["nade"].backward, (torch.ones(3, dtype=torch.float64), None, x, W, c, V, b, order,
                                              logits, "cpp"))
    torch.library.opcheck(OPS["nade"].sample, (W, c, V, b, order, torch.rand(4, 5, dtype=torch.float64), "cpp"))


@needs_binary
def test_binary_torch_compile_fullgraph():
    W, c, V, b, order = binary_params(12, 8, torch.float32)
    x = binary_x(5, 8, torch.float32)

    def loss(x, W, c, V, b):
        return -nops.nade_log_prob(x, W, c, V, b, order).mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    p1 = [t.clone().requires_grad_() for t in (W, c, V, b)]
    p2 = [t.clone().requires_grad_() for t in (W, c, V, b)]
    l1, l2 = compiled(x, *p1), loss(x, *p2)
    torch.testing.assert_close(l1, l2)
    g1, g2 = torch.autograd.grad(l1, p1), torch.autograd.grad(l2, p2)
    for a, b_ in zip(g1, g2):
        torch.testing.assert_close(a, b_)


# ---------------------------------------------------------------- ISA variants

@needs_binary
@pytest.mark.parametrize("isa", ["base", "avx2"])
def test_binary_other_isa_variants(isa):
    """The baseline and AVX2 copies of the loops (chosen by ARMODEL_FAST_ISA) agree with the reference
    (binary NADE values, gradients and samples; categorical NADE and RNADE values)."""
    code = (
        "import torch\n"
        "from armodel_fast import _ext\n"
        "from armodel_fast.ops import nade as nops\n"
        "from armodel_fast.reference import nade as ref\n"
        f"assert _ext.get_ext().nade_cpu_isa() in ({isa!r}, 'base'), _ext.get_ext().nade_cpu_isa()\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for dt in (torch.float32, torch.float64):\n"
        "    W = torch.randn(37, 20, generator=g, dtype=dt) * 2; c = torch.randn(37, generator=g, dtype=dt)\n"
        "    V = torch.randn(20, 37, generator=g, dtype=dt) * 0.3; b = torch.randn(20, generator=g, dtype=dt)\n"
        "    o = torch.randperm(20, generator=g); x = (torch.rand(9, 20, generator=g) < 0.5).to(dt)\n"
        "    p = [t.clone().requires_grad_() for t in (W, c, V, b)]\n"
        "    q = [t.clone().requires_grad_() for t in (W, c, V, b)]\n"
        "    lp = nops.nade_log_prob(x, *p, o); lr = ref.nade_log_prob(x, *q, o)\n"
        "    torch.testing.assert_close(lp, lr, rtol=1e-5, atol=1e-4)\n"
        "    for a, e in zip(torch.autograd.grad(lp.sum(), p), torch.autograd.grad(lr.sum(), q)):\n"
        "        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)\n"
        "    u = torch.rand(9, 20, generator=g, dtype=dt)\n"
        "    xs, _ = nops.nade_sample(W, c, V, b, o, u); xr, _ = ref.nade_sample(W, c, V, b, o, u)\n"
        "    assert (xs != xr).sum() <= 2\n"
        "from armodel_fast.ops import categorical_nade as cops, rnade as rops\n"
        "from armodel_fast.reference import categorical_nade as cref, rnade as rref\n"
        "W = torch.randn(37, 20, 3, generator=g) * 0.3; c = torch.randn(37, generator=g)\n"
        "V = torch.randn(20, 3, 37, generator=g) * 0.3; b = torch.randn(20, 3, generator=g)\n"
        "o = torch.randperm(20, generator=g); x = torch.randint(0, 3, (9, 20), generator=g)\n"
        "torch.testing.assert_close(cops.categorical_nade_log_prob(x, W, c, V, b, o),\n"
        "                           cref.categorical_nade_log_prob(x, W, c, V, b, o), rtol=1e-5, atol=1e-4)\n"
        "V = torch.randn(20, 3, 2, 37, generator=g) * 0.3; b = torch.randn(20, 3, 2, generator=g)\n"
        "x = torch.randn(9, 20, generator=g)\n"
        "torch.testing.assert_close(rops.rnade_log_prob(x, W[..., 0], c, V, b, o),\n"
        "                           rref.rnade_log_prob(x, W[..., 0].contiguous(), c, V, b, o), rtol=1e-5, atol=1e-4)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, ARMODEL_FAST_ISA=isa)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
