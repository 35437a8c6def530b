"""The NADE family by op, against the reference: (1) the ops - every model spec x every
backend here x dtype x shape, through the public functions, against the fp64 reference:
log p, the per-step outputs, every gradient (x too where it is real) and samples from
the same uniforms; (2) the modules with every backend, against the reference module.
Backend-internal cases (ISA variants, block sizes, launchers' own checks, the CUDA row
math) live in test_nade_internals_*.py; the test data by x kind in nade_cases.py."""
import pytest
import torch

from armodel_fast import dispatch
from armodel_fast.ops import nade as ops
from conftest import tolerance
from nade_cases import FAST, build, cases, x_for

CASES = [(spec, backend, dtype) for spec in ops.SPECS.values() for backend in dispatch.BACKENDS[1:]
         if dispatch._why_not(backend, spec.op, torch.device("cpu")) is None
         for dtype in dispatch.dtypes(spec.op, backend) or (torch.float32, torch.float64)]  # what each backend takes
SHAPES = [(1, 1, 2, 2), (4, 6, 5, 3)]  # B, D, H, K
TIE = 1e-4


def _ids(case):
    return f"{case[0].op}-{case[1]}-{str(case[2])[6:]}"


def _params(spec, D, H, K, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    sizes = {"D": D, "H": H, "K": K}
    return [(torch.randn(spec.shape(n, sizes), generator=g, dtype=torch.float64) * 0.7).to(dtype)
            for n in ("W", "c", "V", "b")], torch.randperm(D, generator=g)


def _x(spec, B, D, K, dtype, seed):
    return x_for(spec, B, D, K, dtype, torch.Generator().manual_seed(seed))


def _ref_grads(spec, x, params, order, g_lp, g_out):
    leaves = [p.detach().double().requires_grad_() for p in params]
    xx = x.double().requires_grad_() if spec.x_has_grad else (x.double() if x.dtype.is_floating_point else x)
    lp, out = ops.log_prob(spec, xx, *leaves, order, backend="reference", return_logits=True)
    inputs = leaves + ([xx] if spec.x_has_grad else [])
    grads = torch.autograd.grad((lp * g_lp).sum() + (out * g_out).sum(), inputs, allow_unused=True)
    return lp.detach(), out.detach(), list(grads)  # D = 1: W is never used (no step after the last): None


@pytest.mark.parametrize("B, D, H, K", SHAPES)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_log_prob_outputs_and_gradients(case, B, D, H, K):
    spec, backend, dtype = case
    params, order = _params(spec, D, H, K, dtype, seed=B + D)
    x = _x(spec, B, D, K, dtype, seed=H)
    g_lp = torch.randn(B, dtype=torch.float64)
    g_out = torch.randn(spec.output_shape(B, {"D": D, "K": K}), dtype=torch.float64)
    want_lp, want_out, want_grads = _ref_grads(spec, x, params, order, g_lp, g_out)
    leaves = [p.clone().requires_grad_() for p in params]
    xx = x.clone().requires_grad_() if spec.x_has_grad else x
    lp, out = ops.log_prob(spec, xx, *leaves, order, backend=backend, return_logits=True)
    # fp16/bf16 parameters: the Triton kernels return log p and the outputs in fp32 (computed in
    # fp32 from the exact inputs), so those are held to fp32's tolerance
    assert lp.dtype == out.dtype and lp.dtype in (dtype, torch.float32)
    torch.testing.assert_close(out.double(), want_out, **tolerance(out.dtype))
    torch.testing.assert_close(lp.double(), want_lp, **tolerance(lp.dtype, D))
    got = torch.autograd.grad((lp * g_lp.to(dtype)).sum() + (out * g_out.to(dtype)).sum(),
                              leaves + ([xx] if spec.x_has_grad else []), allow_unused=True)
    for name, g, w in zip(("W", "c", "V", "b", "x"), got, want_grads):
        assert (g is None) == (w is None), f"d{name}: {g} where the reference gives {w}"
        if w is None:
            continue
        assert g.dtype == dtype and g.shape == w.shape, name
        torch.testing.assert_close(g.double(), w, **tolerance(dtype, float(w.abs().max())),
                                   msg=lambda m, name=name: f"d{name}: {m}")


def _near_tie(spec, out, u):
    """Rows where some uniform lies within TIE of a threshold the reference compared it with."""
    return cases(spec).near_tie(out, u, TIE)


@pytest.mark.parametrize("B, D, H, K", SHAPES)
@pytest.mark.parametrize("case", [c for c in CASES if c[2] in (torch.float32, torch.float64)], ids=_ids)
def test_samples_match_the_reference(case, B, D, H, K):
    spec, backend, dtype = case
    n = 3 * B
    params, order = _params(spec, D, H, K, dtype, seed=n + D)
    u = torch.rand((n, D) + spec.uniform_trailing, generator=torch.Generator().manual_seed(K), dtype=torch.float64)
    want_x, want_lp = ops.sample(spec, *[p.double() for p in params], order, u, backend="reference")
    x, lp = ops.sample(spec, *params, order, u.to(dtype), backend=backend)
    assert x.dtype == spec.sample_dtype(params[0]) and lp.dtype == dtype
    _, out = ops.log_prob(spec, want_x, *[p.double() for p in params], order, backend="reference",
                          return_logits=True)
    keep = ~_near_tie(spec, out, u)
    assert keep.sum() >= n // 2, "too many near-ties for a meaningful check"
    if cases(spec).continuous:
        torch.testing.assert_close(x[keep].double(), want_x[keep], **tolerance(dtype, 10.0))
    else:
        assert torch.equal(x[keep].to(want_x.dtype), want_x[keep])
    torch.testing.assert_close(lp[keep].double(), want_lp[keep], **tolerance(dtype, 10.0 * D))


# ==== (2) the modules ==========================================================================
# The NADE modules with every kernel backend that can run here, against the reference module:
# log-probs, every parameter gradient (and dx, for binary NADE and RNADE), samples from the
# same uniforms.
#
# On a machine without a GPU the Triton kernels run under the interpreter on CPU
# tensors (small shapes); on a GPU the ``gpu``-marked cases run Triton and CUDA on
# CUDA tensors in fp32 and bf16 (``benchmarks/gpu_check.sh`` runs ``-m gpu``).
import pytest  # noqa: E402
import torch  # noqa: E402

import armodel_fast as af  # noqa: E402
from model_zoo import randomize  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
# every model with all fast kernels, from the specs (nade_cases.py)
MODELS = [(op, lambda D, H, spec=spec: build(spec, D, H, order=torch.randperm(D))) for op, spec in FAST.items()]


def _module_x(name, B, D, device, dtype):
    return x_for(FAST[name], B, D, None, dtype, device=device)


def _x_grad(name):
    """x requires grad in the module tests (every backend returns dx): binary and real x."""
    return cases(FAST[name]).x_grad


def _cases():
    cases = [("cpp", "cpu", torch.float32), ("cpp", "cpu", torch.float64)]
    if not HAS_CUDA:
        cases.append(("triton", "cpu", torch.float32))  # interpreter
    gpu = pytest.mark.gpu
    for backend in ("triton", "cuda"):
        for dtype in (torch.float32, torch.bfloat16):
            cases.append(pytest.param(backend, "cuda", dtype, marks=[gpu, pytest.mark.skipif(
                not HAS_CUDA, reason="needs a CUDA GPU")]))
    return cases


TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("backend,device,dtype", _cases())
@pytest.mark.parametrize("name,build", MODELS, ids=[m[0] for m in MODELS])
@pytest.mark.parametrize("B,D,H", [(5, 9, 13), (1, 1, 4)])
def test_module_backend_matches_reference(backend, device, dtype, name, build, B, D, H):
    if not af.backends()[backend].available:
        pytest.fail(f"backend {backend} should be available here: {af.backends()[backend].reason}")
    torch.manual_seed(B * 100 + D)
    ref = randomize(build(D, H), 0.5).to(device)
    fast = build(D, H).to(device)
    fast.load_state_dict(ref.state_dict())
    fast.set_backend(backend)
    if dtype == torch.bfloat16:   # low-precision parameters; the reference runs in fp32 on the rounded values
        fast.to(dtype)
        ref.load_state_dict({k: v.to(dtype).float() for k, v in fast.state_dict().items()})
    else:
        ref.to(dtype), fast.to(dtype)
    x = _module_x(name, B, D, device, dtype)
    xr = x.float() if dtype == torch.bfloat16 and x.dtype.is_floating_point else x
    xf = x.clone().requires_grad_() if _x_grad(name) else x
    xrr = xr.clone().requires_grad_() if _x_grad(name) else xr
    lp, lr = fast.log_prob(xf), ref.log_prob(xrr)
    assert fast.last_backend == backend
    tol = TOL[dtype] * max(D, 1)
    torch.testing.assert_close(lp.float(), lr.float(), rtol=TOL[dtype], atol=tol)
    inputs_f = list(fast.parameters()) + ([xf] if _x_grad(name) else [])
    inputs_r = list(ref.parameters()) + ([xrr] if _x_grad(name) else [])
    gf = torch.autograd.grad(lp.sum(), inputs_f, allow_unused=True)
    gr = torch.autograd.grad(lr.sum(), inputs_r, allow_unused=True)
    for (pname, _), a, b in zip(list(fast.named_parameters()) + [("x", None)], gf, gr):
        assert (a is None) == (b is None), f"d{pname}: {a} where the reference gives {b}"  # D = 1: dW None
        if b is None:
            continue
        torch.testing.assert_close(a.float(), b.float(), rtol=TOL[dtype] * 10, atol=tol,
                                   msg=lambda m: f"d{pname}: {m}")
    if dtype != torch.bfloat16:
        u = torch.rand(fast.uniforms_shape(7), device=device, dtype=dtype)
        xs, lps = fast.sample(7, u=u, return_log_prob=True)
        xs_r, lps_r = ref.sample(7, u=u, return_log_prob=True)
        if cases(FAST[name]).continuous:   # continuous draws: equal up to the inverse-CDF's rounding
            torch.testing.assert_close(xs, xs_r, rtol=1e-4, atol=1e-4)
        else:
            assert torch.equal(xs, xs_r)
        torch.testing.assert_close(lps, lps_r, rtol=TOL[dtype], atol=tol)


@pytest.mark.parametrize("backend,device,dtype",
                         [c for c in _cases() if getattr(c, "values", c)[2] != torch.bfloat16])
@pytest.mark.parametrize("name,build", MODELS, ids=[m[0] for m in MODELS])
def test_gradient_through_the_outputs(backend, device, dtype, name, build):
    """A loss that uses forward()'s per-dimension outputs (e.g. a BCE on the logits), alone or
    with log_prob from the same call: every backend's gradients equal the reference's."""
    if not af.backends()[backend].available:
        pytest.fail(f"backend {backend} should be available here: {af.backends()[backend].reason}")
    B, D, H = 4, 7, 6
    torch.manual_seed(D)
    ref = randomize(build(D, H), 0.5).to(device, dtype)
    fast = build(D, H).to(device, dtype)
    fast.load_state_dict(ref.state_dict())
    fast.set_backend(backend)
    x = _module_x(name, B, D, device, dtype)
    xf = x.clone().requires_grad_() if _x_grad(name) else x
    xr = x.clone().requires_grad_() if _x_grad(name) else x
    w = torch.randn(B, device=device, dtype=dtype)
    for both in (False, True):
        grads = []
        for model, xx in ((fast, xf), (ref, xr)):
            lp, out = model._log_prob_and_params(xx)
            gout = torch.linspace(-1, 1, out.numel(), device=device, dtype=dtype).reshape(out.shape)
            loss = (out * gout).sum() + ((lp * w).sum() if both else 0)
            inputs = list(model.parameters()) + ([xx] if _x_grad(name) else [])
            grads.append(torch.autograd.grad(loss, inputs, allow_unused=True))
        assert fast.last_backend == backend
        for pname, a, b in zip([n for n, _ in fast.named_parameters()] + ["x"], *grads):
            if a is None or b is None:
                assert (a is None or not a.any()) and (b is None or not b.any()), pname
                continue
            torch.testing.assert_close(a, b, rtol=TOL[dtype] * 10, atol=TOL[dtype] * D,
                                       msg=lambda m: f"d{pname} (log_prob too: {both}): {m}")
