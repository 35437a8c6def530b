"""NADE backend internals: the CUDA row math on the CPU (row reference), every native kind of SPECS."""
from __future__ import annotations

import pytest
import torch

from armodel_fast import _ext
from model_zoo import randomize
from nade_cases import NATIVE, build, x_for


# The CUDA NADE kernels' row math (csrc/nade/nade_row.h), run on the CPU, vs the reference.
#
# The CUDA kernels run the same header functions with 32 lanes per row (one
# warp); here they run with one lane per row, so every index, head and the
# reverse recurrence are checked on machines without a GPU (docs/DESIGN.md section 5).


C = _ext.get_ext()
needs_ext = pytest.mark.skipif(C is None, reason=f"C++ extension missing: {_ext.ext_error()}")

KINDS = sorted(NATIVE)  # every native kind of SPECS (csrc/nade/nade_heads.h AF_NADE_KINDS)


def _model(kind, D, H, K, dtype, seed):
    torch.manual_seed(seed)
    order = torch.randperm(D)
    return randomize(build(NATIVE[kind], D, H, K, order=order), 0.5).to(dtype)


def _data(kind, B, D, K, dtype):
    return x_for(NATIVE[kind], B, D, K, dtype)


@needs_ext
@pytest.mark.parametrize("kind", KINDS)
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
    spec = NATIVE[kind]
    xr = x.clone().requires_grad_() if spec.x_has_grad else x
    ref_out = spec.ref_outputs(xr, *leaves, order)
    ref_lp = spec.head_log_prob(ref_out, xr).sum(-1)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4 * D}
    torch.testing.assert_close(out, ref_out.detach(), **tol)
    torch.testing.assert_close(lp, ref_lp.detach(), **tol)
    grad = torch.randn(B, dtype=dtype)
    inputs = leaves + ([xr] if spec.x_has_grad else [])
    gout = torch.randn(out.shape, dtype=dtype) if through_outputs else None
    loss = (ref_lp * grad).sum() + ((ref_out * gout).sum() if through_outputs else 0)
    refs = torch.autograd.grad(loss, inputs, allow_unused=True)  # W is unused when D = 1
    refs = [torch.zeros_like(t) if r is None else r for t, r in zip(inputs, refs)]
    got = C.nade_rowref_backward(kind, grad, x, *(t.detach() for t in (W, c, V, b)), order, out, gout)
    for name, g, r in zip(["dW", "dc", "dV", "db", "dx"], got, refs):
        torch.testing.assert_close(g, r, msg=lambda m: f"{name}: {m}", **tol)
    assert (got[4] is None) == (not spec.x_has_grad)


@needs_ext
@pytest.mark.parametrize("kind", KINDS)
def test_sample_matches_reference(kind):
    D, H, K, n = 9, 6, 3, 40
    m = _model(kind, D, H, K, torch.float64, seed=kind)
    u = torch.rand(m.uniforms_shape(n), dtype=torch.float64)
    x, lp = C.nade_rowref_sample(kind, *(t.detach() for t in m.params()[:4]), m.order, u)
    rx, rlp = NATIVE[kind].ref_sample(*(t.detach() for t in m.params()), u)
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
