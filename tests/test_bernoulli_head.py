"""The Bernoulli head in one autograd node (ops/made/bernoulli_head.py, csrc/made/bernoulli_head_cpu.cpp):
the values and gradients of the reference's ``bernoulli_log_prob(logits, x).sum(-1)``."""
import pytest
import torch

import armodel_fast as af
from armodel_fast import _ext
from armodel_fast.ops.made import bernoulli_log_prob
from armodel_fast.reference import heads
from made_cases import graph_nodes

EXT = _ext.get_ext() is not None and hasattr(_ext.get_ext(), "bernoulli_log_prob_forward")
pytestmark = pytest.mark.skipif(not EXT, reason=f"no cpp Bernoulli head here:\n{af.explain('made')}")
TOL = {torch.float32: {"rtol": 2e-6, "atol": 1e-5}, torch.float64: {"rtol": 1e-12, "atol": 1e-12}}


def reference(logits, x):
    return heads.bernoulli_log_prob(logits, x).sum(-1)


def pair(B, D, dtype, seed=0, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, D, generator=g, dtype=dtype) * scale
    x = (torch.rand(B, D, generator=g) < 0.5).to(dtype)
    return logits, x


def grads(fn, logits, x, g, need_x=False):
    l_ = logits.clone().requires_grad_()
    x_ = x.clone().requires_grad_(need_x)
    out = fn(l_, x_)
    out.backward(g)
    return out.detach(), l_.grad, x_.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B, D", [(1, 1), (3, 15), (5, 16), (7, 33), (100, 784), (2, 0)])
def test_values_and_gradients_match_the_reference(dtype, B, D):
    logits, x = pair(B, D, dtype, seed=B * 1000 + D)
    if D >= 4:  # past the reference's softplus threshold (20) and far into both tails
        logits[0, :4] = torch.tensor([100.0, -100.0, 25.0, -25.0], dtype=dtype)
    g = torch.randn(B, generator=torch.Generator().manual_seed(1), dtype=dtype)
    got, want = grads(bernoulli_log_prob, logits, x, g, need_x=True), grads(reference, logits, x, g, need_x=True)
    assert got[0].shape == (B,)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_strided_inputs_and_values_other_than_0_and_1():
    """Non-contiguous logits and x, and real-valued x (the formula is the reference's for any x)."""
    logits, _ = pair(6, 40, torch.float32)
    x = torch.rand(40, 6).t()  # [6, 40], transposed strides
    lt = logits[:, ::1].t().contiguous().t()
    assert not x.is_contiguous() and not lt.is_contiguous()
    g = torch.randn(6)
    for a, b in zip(grads(bernoulli_log_prob, lt, x, g, True), grads(reference, lt, x, g, True)):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


def test_non_finite_logits_give_the_references_values_and_gradients():
    inf, nan = float("inf"), float("nan")
    logits = torch.tensor([[inf, -inf, nan, 0.0, inf, -inf, 88.0, -88.0, 1e30, -1e30]] * 2)
    x = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0], [0.0] * 10])
    g = torch.tensor([1.0, 2.0])
    for col in range(logits.shape[1]):  # each value alone: one NaN would hide the rest of the row
        got = grads(bernoulli_log_prob, logits[:, col:col + 1], x[:, col:col + 1], g)
        want = grads(reference, logits[:, col:col + 1], x[:, col:col + 1], g)
        for a, b in zip(got[:2], want[:2]):
            torch.testing.assert_close(a, b, equal_nan=True, rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_finite_and_extreme_logits_in_the_vector_loops(dtype):
    """Each value across a row of 40 (whole vectors and a tail), against the reference; the
    exp clamp at -87 leaves a gradient of about -2e-38 where the reference's is below that."""
    values = [float("inf"), -float("inf"), float("nan"), 0.0, 21.0, -21.0, 88.0, 89.0, -87.5, -200.0, 1e30, -1e30]
    logits = torch.tensor(values, dtype=dtype)[:, None].expand(-1, 40).contiguous()
    x = (torch.arange(40) % 2).to(dtype).expand(len(values), -1).contiguous()
    g = torch.linspace(0.5, 2.0, len(values), dtype=dtype)
    got, want = grads(bernoulli_log_prob, logits, x, g), grads(reference, logits, x, g)
    for a, b in zip(got[:2], want[:2]):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("create_graph", [False, True])
def test_an_infinite_upstream_gradient_gives_the_references_nans(create_graph):
    logits = torch.tensor([[0.0, 3.0, -3.0, 25.0, -100.0]] * 2)
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0]] * 2)
    g = torch.tensor([float("inf"), -float("inf")])
    got = []
    for fn in (bernoulli_log_prob, reference):
        l_ = logits.clone().requires_grad_()
        (gl,) = torch.autograd.grad(fn(l_, x), l_, g, create_graph=create_graph)
        got.append(gl.detach())
    assert bool(got[1].isnan().all())
    torch.testing.assert_close(got[0], got[1], equal_nan=True)


def test_gradients_of_gradients_and_batched_gradients():
    """create_graph=True records tensor ops with the same gradient (differentiable again);
    is_grads_batched=True (vmap over the backward) too."""
    logits, x = pair(4, 9, torch.float64)
    results = []
    for fn in (bernoulli_log_prob, reference):
        l_ = logits.clone().requires_grad_()
        (gl,) = torch.autograd.grad(fn(l_, x).sum(), l_, create_graph=True)
        (hv,) = torch.autograd.grad((gl * torch.arange(9.0, dtype=torch.float64)).sum(), l_)
        (jac,) = torch.autograd.grad(fn(l_, x), l_, torch.eye(4, dtype=torch.float64), is_grads_batched=True)
        results.append((gl.detach(), hv, jac))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_other_dtypes_and_compile_take_the_reference_ops():
    logits, x = pair(3, 5, torch.float32)
    half = bernoulli_log_prob(logits.bfloat16(), x.bfloat16())
    assert torch.equal(half, reference(logits.bfloat16(), x.bfloat16()))
    compiled = torch.compile(bernoulli_log_prob, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(logits, x), reference(logits, x))


def test_kernel_entry_points_name_bad_arguments():
    ext = _ext.get_ext()
    logits, x = pair(3, 5, torch.float32)
    with pytest.raises(ValueError, match="x must have the logits' shape"):
        ext.bernoulli_log_prob_forward(logits, x[:, :4])
    with pytest.raises(TypeError, match="x"):
        ext.bernoulli_log_prob_forward(logits, x.double())
    with pytest.raises(ValueError, match="grad must have shape"):
        ext.bernoulli_log_prob_backward(torch.ones(4), logits, x)
    with pytest.raises(TypeError, match="logits must be float32 or float64"):
        ext.bernoulli_log_prob_forward(logits.half(), x.half())


@pytest.mark.parametrize("model", ["made", "fvsbn"])
def test_models_use_it_on_fast_backends_only(model):
    """MADE / FVSBN log_prob with backend="cpp" end in this node; "reference" stays the plain ops."""
    torch.manual_seed(0)
    make = (lambda b: af.MADE(12, [20], backend=b)) if model == "made" else (lambda b: af.FVSBN(12, backend=b))
    fast, ref = make("cpp"), make("reference")
    ref.load_state_dict(fast.state_dict())
    x = (torch.rand(5, 12) < 0.5).float()
    lp_fast, lp_ref = fast.log_prob(x), ref.log_prob(x)
    assert "_BernoulliLogProbBackward" in graph_nodes(lp_fast)
    assert "_BernoulliLogProbBackward" not in graph_nodes(lp_ref)
    torch.testing.assert_close(lp_fast, lp_ref, rtol=1e-5, atol=1e-5)
    lp_fast.sum().backward()
    lp_ref.sum().backward()
    for p, q in zip(fast.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)
