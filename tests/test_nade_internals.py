"""Backend internals of the NADE family (the op-level checks over every backend and dtype: test_nade.py).

Three parts: the C++ CPU kernels (ISA variants, launchers' own checks, thread determinism,
gradcheck, custom ops), the Triton kernels at launcher level (block sizes, low precision,
extreme weights), and the CUDA row math run on the CPU (row reference).
"""
from __future__ import annotations


# ==== Part 1: C++ CPU kernels - tolerances and helpers ================================================
# Shared by the C++ CPU NADE kernel tests (the binary C++ section: binary;
# the categorical/RNADE C++ section: categorical, RNADE): the extension handle, skip marks
# and the tolerances.
#
# Tolerances (fp32; sums of D terms scale with D):
#   per-step outputs (logits, mixture params)  rtol 1e-5, atol 1e-5
#   log p(x)                                    rtol 1e-5, atol 2e-6 * D
#   gradients                                   rtol 1e-4, atol 1e-5 * max|reference gradient|
# fp64 uses rtol 1e-10 and atol 1e-10 (1e-9 * D for log p).

import pytest  # noqa: E402
import torch  # noqa: E402

from armodel_fast import _ext  # noqa: E402

EXT = _ext.get_ext()
HAS_BINARY = EXT is not None and hasattr(EXT, "nade_forward")
needs_binary = pytest.mark.skipif(not HAS_BINARY, reason=f"armodel_fast._C without NADE kernels: {_ext.ext_error()}")
HAS_VARIANTS = HAS_BINARY  # nade_forward(kind, ...) runs every variant
needs_variants = pytest.mark.skipif(not HAS_VARIANTS, reason="armodel_fast._C without categorical NADE / RNADE")

TIE = 1e-5  # samples: rows where some u lies this close to the reference's probability are left out


def tol(dtype, D):
    """(per-step, log p) tolerances."""
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-10), dict(rtol=1e-10, atol=1e-9 * D)
    return dict(rtol=1e-5, atol=1e-5), dict(rtol=1e-5, atol=2e-6 * D)


def close_grads(got, want, names, dtype):
    for g, w, name in zip(got, want, names):
        w = torch.zeros_like(g) if w is None else w
        scale = float(w.abs().max()) if w.numel() else 1.0
        atol = (1e-10 if dtype == torch.float64 else 1e-5) * max(scale, 1e-3)
        rtol = 1e-10 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol, msg=lambda m: f"d{name}: {m}")


# ==== binary NADE (C++) ===============================================================================
# C++ CPU binary NADE kernels against the reference (categorical NADE and RNADE:
# the categorical/RNADE C++ section; tolerances: Part 1 helpers).
#
# Checked: log-probabilities and logits, every parameter gradient, samples drawn
# from the same uniforms (equal except in rows where some u lies within 1e-5 of
# the reference's own probability, which are excluded), fp64 gradcheck, extreme
# weights, bad input, torch.compile tracing, the other ISA builds, and
# determinism across thread counts.

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from armodel_fast.dispatch import BackendUnavailableError  # noqa: E402
from armodel_fast.ops.nade import OPS  # noqa: E402
from armodel_fast.reference import nade as ref  # noqa: E402

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
    leaves = [t.clone().requires_grad_() for t in (W, c, V, b)]
    ref_logits = ref.nade_logits_loop(x, *leaves, order)
    ref_lp = ref.bernoulli_log_prob(ref_logits, x).sum(-1)
    gl, gll = torch.randn(B, dtype=dtype), torch.randn(B, D, dtype=dtype)
    want = torch.autograd.grad((ref_lp * gl).sum() + (ref_logits * gll).sum(), leaves, allow_unused=True)

    params = [t.clone().requires_grad_() for t in (W, c, V, b)]
    lp, logits = nops.nade_log_prob(x, *params, order, return_logits=True)
    step_tol, lp_tol = tol(dtype, D)
    torch.testing.assert_close(logits, ref_logits.detach(), **step_tol)
    torch.testing.assert_close(lp, ref_lp.detach(), **lp_tol)
    got = torch.autograd.grad((lp * gl).sum() + (logits * gll).sum(), params)
    close_grads(got, want, "W c V b".split(), dtype)


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


# ==== categorical NADE and RNADE (C++) ================================================================
# C++ CPU categorical NADE and RNADE kernels (csrc/nade/nade_variants_cpu.cpp) against
# the reference: log-probabilities and per-step outputs, every gradient (dx too for
# RNADE), samples from the same uniforms (rows with ties excluded), fp64 gradcheck,
# extreme weights, bad input, custom ops under torch.compile, determinism across
# thread counts. Tolerances: Part 1 helpers.

import pytest  # noqa: E402
import torch  # noqa: E402

from armodel_fast.ops.nade import OPS  # noqa: E402
from armodel_fast.reference import categorical_nade as cref  # noqa: E402
from armodel_fast.reference import rnade as rref  # noqa: E402
from armodel_fast.reference.heads import categorical_log_prob, gaussian_mixture_log_prob  # noqa: E402

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
    leaves = [t.clone().requires_grad_() for t in (W, c, V, b)]
    ref_logits = cref.categorical_nade_logits_loop(x, *leaves, order)
    ref_lp = categorical_log_prob(ref_logits, x).sum(-1)
    gl, gll = torch.randn(B, dtype=dtype), torch.randn(B, D, K, dtype=dtype)
    want = torch.autograd.grad((ref_lp * gl).sum() + (ref_logits * gll).sum(), leaves, allow_unused=True)
    params = [t.clone().requires_grad_() for t in (W, c, V, b)]
    lp, logits = cops.categorical_nade_log_prob(x, *params, order, return_logits=True)
    step_tol, lp_tol = tol(dtype, D)
    torch.testing.assert_close(logits, ref_logits.detach(), **step_tol)
    torch.testing.assert_close(lp, ref_lp.detach(), **lp_tol)
    got = torch.autograd.grad((lp * gl).sum() + (logits * gll).sum(), params)
    close_grads(got, want, "W c V b".split(), dtype)


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


@needs_variants
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B, D, H, K", VARIANT_SHAPES)
def test_rnade_log_prob_and_grads(B, D, H, K, dtype):
    W, c, V, b, order = rnade_params(H, D, K, dtype, seed=B + D + H)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(K), dtype=dtype)
    leaves = [t.clone().requires_grad_() for t in (x, W, c, V, b)]
    p = rref.rnade_params_loop(leaves[0], *leaves[1:], order)
    ref_lp = gaussian_mixture_log_prob(p[:, :, 0], p[:, :, 1], p[:, :, 2], leaves[0]).sum(-1)
    gl, gp = torch.randn(B, dtype=dtype), torch.randn(B, D, 3, K, dtype=dtype)
    want = torch.autograd.grad((ref_lp * gl).sum() + (p * gp).sum(), leaves, allow_unused=True)
    args = [t.clone().requires_grad_() for t in (x, W, c, V, b)]
    lp, params = rops.rnade_log_prob(args[0], *args[1:], order, return_logits=True)
    step_tol, lp_tol = tol(dtype, D)
    torch.testing.assert_close(params, p.detach(), **step_tol)
    torch.testing.assert_close(lp, ref_lp.detach(), **lp_tol)
    got = torch.autograd.grad((lp * gl).sum() + (params * gp).sum(), args)
    close_grads(got, want, "x W c V b".split(), dtype)


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


# ==== Part 2: Triton kernels - tolerances and helpers =================================================
# Shared by the Triton NADE kernel tests (the binary Triton section: binary;
# the categorical/RNADE Triton section: categorical, RNADE): device, tolerances and the
# comparison helpers.
#
# Tolerances. The kernels compute in fp32 from the exact (upcast) input values,
# so log-probs and logits agree with the fp64 reference to fp32 rounding, scaled
# by D (sums of D terms) - also for fp16/bf16 inputs. Gradients are accumulated
# in fp32 and rounded to the parameter dtype at the end: fp32 atol/rtol 1e-5
# (x the gradient's scale), fp16 2e-3, bf16 1.6e-2 (twice the dtype's unit
# roundoff).
import os  # noqa: E402

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRAD_RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
LOW = [torch.float16, torch.bfloat16]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, g, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)


def close(actual, expected, atol, rtol, what):
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), atol=atol, rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


def check_grads(got, params, dtype, what, names=("W", "c", "V", "b")):
    for name, g, p in zip(names, got, params):
        assert g.dtype == dtype and g.shape == p.shape, f"{what} d{name}: {g.dtype} {tuple(g.shape)}"
        expected = torch.zeros_like(p) if p.grad is None else p.grad  # D=1: W is never used
        scale = max(1.0, expected.abs().max().item())
        r = GRAD_RTOL[dtype]
        close(g, expected, atol=r * scale, rtol=r, what=f"{what} d{name}")


def ref_grads(fn, x, params, order, grad, x_grad=False):
    """Reference log_prob (fp64) and the autograd leaves of sum(grad * log_prob) (+ x last)."""
    leaves = [p.detach().double().cpu().requires_grad_() for p in params]
    xx = x.cpu().double().requires_grad_(x_grad) if x.dtype.is_floating_point else x.cpu()
    lp = fn(xx, *leaves, order.cpu())
    (lp * grad.double().cpu()).sum().backward()
    return lp.detach(), leaves + ([xx] if x_grad else [])


def near_tie_rows(u, p, eps=1e-5):
    """Rows where some uniform lies within eps of the probability it is compared with."""
    return ((u - p).abs() < eps).flatten(1).any(1)


# ==== binary NADE (Triton) ============================================================================
# Triton binary NADE kernels against the reference (categorical NADE and RNADE:
# the categorical/RNADE Triton section; tolerances: Part 2 helpers).
#
# Without a GPU the kernels run under the Triton interpreter on CPU tensors
# (TRITON_INTERPRET=1, set before triton is imported), so shapes stay small.
# Each launcher is compared with the reference in fp64 (and fp32 for the
# parameter dtype fp32): log-prob, per-dimension outputs, every gradient, and
# samples drawn from the same uniforms.
import os  # noqa: E402

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import itertools  # noqa: E402

import pytest  # noqa: E402

from armodel_fast.kernels import nade_triton as nt  # noqa: E402
from armodel_fast.reference import nade as ref  # noqa: E402

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


# ==== categorical NADE and RNADE (Triton) =============================================================
# Triton categorical NADE and RNADE kernels against the reference (binary:
# the binary Triton section; tolerances: Part 2 helpers): log-prob and
# per-dimension outputs, every gradient, samples from the same uniforms, fp16 /
# bf16, extreme weights, bad input. Under the Triton interpreter without a GPU.
import os  # noqa: E402

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import itertools  # noqa: E402

import pytest  # noqa: E402

from armodel_fast.kernels import categorical_nade_triton as ct  # noqa: E402
from armodel_fast.kernels import rnade_triton as rt  # noqa: E402
from armodel_fast.reference import categorical_nade as cref  # noqa: E402
from armodel_fast.reference import rnade as rref  # noqa: E402


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


# ==== Part 3: the CUDA row math on the CPU ============================================================
# The CUDA NADE kernels' row math (csrc/nade/nade_row.h), run on the CPU, vs the reference.
#
# The CUDA kernels run the same header functions with 32 lanes per row (one
# warp); here they run with one lane per row, so every index, head and the
# reverse recurrence are checked on machines without a GPU (docs/DESIGN.md section 5).
import pytest  # noqa: E402
import torch  # noqa: E402

import armodel_fast as af  # noqa: E402
from armodel_fast import _ext  # noqa: E402
from armodel_fast.reference import categorical_nade as cref  # noqa: E402
from armodel_fast.reference import nade as nref  # noqa: E402
from armodel_fast.reference import rnade as rref  # noqa: E402
from model_zoo import randomize  # noqa: E402

C = _ext.get_ext()
needs_ext = pytest.mark.skipif(C is None, reason=f"C++ extension missing: {_ext.ext_error()}")

KINDS = {0: (af.NADE, nref.nade_logits_loop, nref.nade_sample),
         1: (af.CategoricalNADE, cref.categorical_nade_logits_loop, cref.categorical_nade_sample),
         2: (af.RNADE, rref.rnade_params_loop, rref.rnade_sample)}


def _model(kind, D, H, K, dtype, seed):
    torch.manual_seed(seed)
    cls = KINDS[kind][0]
    order = torch.randperm(D)
    m = cls(D, H, order=order) if kind == 0 else cls(D, H, K, order=order)
    return randomize(m, 0.5).to(dtype)


def _data(kind, B, D, K, dtype):
    if kind == 0:
        return (torch.rand(B, D) < 0.5).to(dtype)
    if kind == 1:
        return torch.randint(0, K, (B, D))
    return torch.randn(B, D, dtype=dtype)


def _head_log_prob(kind, out, x):
    from armodel_fast.reference import heads
    if kind == 0:
        return heads.bernoulli_log_prob(out, x).sum(-1)
    if kind == 1:
        return heads.categorical_log_prob(out, x).sum(-1)
    return heads.gaussian_mixture_log_prob(out[:, :, 0], out[:, :, 1], out[:, :, 2], x).sum(-1)


@needs_ext
@pytest.mark.parametrize("kind", [0, 1, 2])
@pytest.mark.parametrize("B,D,H,K", [(3, 7, 5, 3), (1, 1, 4, 2), (4, 12, 33, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("through_outputs", [False, True])
def test_forward_and_backward_match_reference(kind, B, D, H, K, dtype, through_outputs):
    """Gradients of sum(grad * log_prob), plus sum(gout * outputs) when ``through_outputs``."""
    m = _model(kind, D, H, K, dtype, seed=B + D)
    x = _data(kind, B, D, K, dtype)
    W, c, V, b, order = m.params()
    lp, out = C.nade_rowref_forward(kind, x, W.detach(), c.detach(), V.detach(), b.detach(), order)
    leaves = [t.detach().requires_grad_() for t in (W, c, V, b)]
    xr = x.clone().requires_grad_() if kind == 2 else x
    ref_out = KINDS[kind][1](xr, *leaves, order)
    ref_lp = _head_log_prob(kind, ref_out, xr)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4 * D}
    torch.testing.assert_close(out, ref_out.detach(), **tol)
    torch.testing.assert_close(lp, ref_lp.detach(), **tol)
    grad = torch.randn(B, dtype=dtype)
    inputs = leaves + ([xr] if kind == 2 else [])
    gout = torch.randn(out.shape, dtype=dtype) if through_outputs else None
    loss = (ref_lp * grad).sum() + ((ref_out * gout).sum() if through_outputs else 0)
    refs = torch.autograd.grad(loss, inputs, allow_unused=True)  # W is unused when D = 1
    refs = [torch.zeros_like(t) if r is None else r for t, r in zip(inputs, refs)]
    got = C.nade_rowref_backward(kind, grad, x, *(t.detach() for t in (W, c, V, b)), order, out, gout)
    for name, g, r in zip(["dW", "dc", "dV", "db", "dx"], got, refs):
        torch.testing.assert_close(g, r, msg=lambda m: f"{name}: {m}", **tol)
    assert (got[4] is None) == (kind != 2)


@needs_ext
@pytest.mark.parametrize("kind", [0, 1, 2])
def test_sample_matches_reference(kind):
    D, H, K, n = 9, 6, 3, 40
    m = _model(kind, D, H, K, torch.float64, seed=kind)
    u = torch.rand(m.uniforms_shape(n), dtype=torch.float64)
    x, lp = C.nade_rowref_sample(kind, *(t.detach() for t in m.params()[:4]), m.order, u)
    rx, rlp = KINDS[kind][2](*(t.detach() for t in m.params()), u)
    torch.testing.assert_close(x, rx)
    torch.testing.assert_close(lp, rlp)


@needs_ext
def test_bad_arguments_are_named():
    m = _model(0, 4, 3, 1, torch.float32, 0)
    W, c, V, b, order = (t.detach() for t in m.params())
    with pytest.raises(ValueError, match="order"):
        C.nade_rowref_forward(0, torch.zeros(2, 4), W, c, V, b, torch.tensor([0, 0, 1, 2]))
    with pytest.raises(ValueError, match="x must have shape"):
        C.nade_rowref_forward(0, torch.zeros(2, 5), W, c, V, b, order)
    with pytest.raises(TypeError, match="x must be an int64"):
        C.nade_rowref_forward(1, torch.zeros(2, 4), W[:, :, None].expand(3, 4, 2).contiguous(), c,
                              V[:, None].expand(4, 2, 3).contiguous(), b[:, None].expand(4, 2).contiguous(), order)
