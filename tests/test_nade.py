"""The NADE family by op: every model spec x every backend here x dtype x shape, against
the fp64 reference through the public functions - log p, the per-step outputs, every
gradient (x too where it is real) and samples from the same uniforms. Backend-internal
cases (ISA variants, block sizes, launchers' own checks) live in the *_internals files."""
import pytest
import torch

from armodel_fast import dispatch
from armodel_fast.ops import nade as ops
from conftest import tolerance

DTYPES = {"cpp": [torch.float32, torch.float64], "triton": [torch.float32, torch.float16, torch.bfloat16],
          "cuda": [torch.float32, torch.float64]}
CASES = [(spec, backend, dtype) for spec in ops.SPECS.values() for backend in ("cpp", "triton", "cuda")
         if dispatch._why_not(backend, spec.op, torch.device("cpu")) is None for dtype in DTYPES[backend]]
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
    g = torch.Generator().manual_seed(seed)
    if spec.x_kind == "binary":
        return torch.randint(0, 2, (B, D), generator=g).to(dtype)
    if spec.x_kind == "categorical":
        return torch.randint(0, K, (B, D), generator=g)
    return torch.randn(B, D, generator=g, dtype=torch.float64).to(dtype)


def _ref_grads(spec, x, params, order, g_lp, g_out):
    leaves = [p.detach().double().requires_grad_() for p in params]
    xx = x.double().requires_grad_() if spec.x_has_grad else (x.double() if x.dtype.is_floating_point else x)
    lp, out = ops.log_prob(spec, xx, *leaves, order, backend="reference", return_logits=True)
    inputs = leaves + ([xx] if spec.x_has_grad else [])
    grads = torch.autograd.grad((lp * g_lp).sum() + (out * g_out).sum(), inputs, allow_unused=True)
    # D = 1: W is never used (no step after the last); its gradient is zero
    return lp.detach(), out.detach(), [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]


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
                              leaves + ([xx] if spec.x_has_grad else []))
    for name, g, w in zip(("W", "c", "V", "b", "x"), got, want_grads):
        assert g.dtype == dtype and g.shape == w.shape, name
        torch.testing.assert_close(g.double(), w, **tolerance(dtype, float(w.abs().max())),
                                   msg=lambda m, name=name: f"d{name}: {m}")


def _near_tie(spec, out, u):
    """Rows where some uniform lies within TIE of a threshold the reference compared it with."""
    if spec.x_kind == "binary":
        return ((u - torch.sigmoid(out)).abs() < TIE).any(1)
    logits = out if spec.x_kind == "categorical" else out[:, :, 0]
    cdf = torch.cumsum(torch.softmax(logits, -1), -1)
    uu = u if spec.x_kind == "categorical" else u[..., 0]
    return ((cdf - uu[..., None]).abs() < TIE).flatten(1).any(1)


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
    if spec.x_kind == "real":
        torch.testing.assert_close(x[keep].double(), want_x[keep], **tolerance(dtype, 10.0))
    else:
        assert torch.equal(x[keep].to(want_x.dtype), want_x[keep])
    torch.testing.assert_close(lp[keep].double(), want_lp[keep], **tolerance(dtype, 10.0 * D))
