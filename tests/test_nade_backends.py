"""The NADE modules with every kernel backend that can run here, against the reference module:
log-probs, every parameter gradient (and dx, for binary NADE and RNADE), samples from the
same uniforms.

On a machine without a GPU the Triton kernels run under the interpreter on CPU
tensors (small shapes); on a GPU the ``gpu``-marked cases run Triton and CUDA on
CUDA tensors in fp32 and bf16 (``benchmarks/gpu_check.sh`` runs ``-m gpu``).
"""
import pytest
import torch

import armodel_fast as af
from model_zoo import randomize

HAS_CUDA = torch.cuda.is_available()
MODELS = [("nade", lambda D, H: af.NADE(D, H, order=torch.randperm(D))),
          ("categorical_nade", lambda D, H: af.CategoricalNADE(D, H, 3, order=torch.randperm(D))),
          ("rnade", lambda D, H: af.RNADE(D, H, 2, order=torch.randperm(D)))]


def _x(name, B, D, device, dtype):
    if name == "nade":
        return (torch.rand(B, D, device=device) < 0.5).to(dtype)
    if name == "categorical_nade":
        return torch.randint(0, 3, (B, D), device=device)
    return torch.randn(B, D, device=device, dtype=dtype)


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
    x = _x(name, B, D, device, dtype)
    xr = x.float() if dtype == torch.bfloat16 and name != "categorical_nade" else x
    xf = x.clone().requires_grad_() if name != "categorical_nade" else x
    xrr = xr.clone().requires_grad_() if name != "categorical_nade" else xr
    lp, lr = fast.log_prob(xf), ref.log_prob(xrr)
    assert fast.last_backend == backend
    tol = TOL[dtype] * max(D, 1)
    torch.testing.assert_close(lp.float(), lr.float(), rtol=TOL[dtype], atol=tol)
    inputs_f = list(fast.parameters()) + ([xf] if name != "categorical_nade" else [])
    inputs_r = list(ref.parameters()) + ([xrr] if name != "categorical_nade" else [])
    gf = torch.autograd.grad(lp.sum(), inputs_f, allow_unused=True)
    gr = torch.autograd.grad(lr.sum(), inputs_r, allow_unused=True)
    for (pname, _), a, b in zip(list(fast.named_parameters()) + [("x", None)], gf, gr):
        a = torch.zeros_like(inputs_f[0]) if a is None and b is None else a
        if b is None:
            continue
        torch.testing.assert_close(a.float(), b.float(), rtol=TOL[dtype] * 10, atol=tol,
                                   msg=lambda m: f"d{pname}: {m}")
    if dtype != torch.bfloat16:
        u = torch.rand(fast.uniforms_shape(7), device=device, dtype=dtype)
        xs, lps = fast.sample(7, u=u, return_log_prob=True)
        xs_r, lps_r = ref.sample(7, u=u, return_log_prob=True)
        if name == "rnade":   # continuous draws: equal up to the inverse-normal-CDF's rounding
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
    x = _x(name, B, D, device, dtype)
    xf = x.clone().requires_grad_() if name != "categorical_nade" else x
    xr = x.clone().requires_grad_() if name != "categorical_nade" else x
    w = torch.randn(B, device=device, dtype=dtype)
    for both in (False, True):
        grads = []
        for model, xx in ((fast, xf), (ref, xr)):
            lp, out = model._log_prob_and_params(xx)
            gout = torch.linspace(-1, 1, out.numel(), device=device, dtype=dtype).reshape(out.shape)
            loss = (out * gout).sum() + ((lp * w).sum() if both else 0)
            inputs = list(model.parameters()) + ([xx] if name != "categorical_nade" else [])
            grads.append(torch.autograd.grad(loss, inputs, allow_unused=True))
        assert fast.last_backend == backend
        for pname, a, b in zip([n for n, _ in fast.named_parameters()] + ["x"], *grads):
            if a is None or b is None:
                assert (a is None or not a.any()) and (b is None or not b.any()), pname
                continue
            torch.testing.assert_close(a, b, rtol=TOL[dtype] * 10, atol=TOL[dtype] * D,
                                       msg=lambda m: f"d{pname} (log_prob too: {both}): {m}")
