"""ops.made.affine_density (the affine flow's density direction as one autograd node)
against the reference's composition: values, first and second derivatives, layouts,
dtypes, and MADE.transform on the fast backends."""
import importlib

import pytest
import torch

from armodel_fast.ops.made import affine_density
density_module = importlib.import_module("armodel_fast.ops.made.affine_density")  # the package exports the function
from armodel_fast.reference import made as ref
from made_cases import SKIP_WITHOUT_FAST, backends, data, pair


def reference(x, raw, clip):
    mu, ls = raw.view(x.shape[0], x.shape[1], 2).unbind(2)
    return ref.gaussian_transform(x, mu, ref.bounded_log_sigma(ls, clip))


def draw(B, D, dtype=torch.float64, seed=0, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=dtype)
    raw = torch.randn(B, 2 * D, generator=g, dtype=dtype) * spread  # past the clip's knee (log 1e3 / 2)
    return x, raw


@pytest.fixture(params=["kernels", "tensor ops"])
def impl(request, monkeypatch):
    """Both implementations on CPU tensors: the extension's kernels and the tensor ops (other devices)."""
    if request.param == "kernels":
        if density_module._cpu_kernels(torch.zeros(1)) is None:
            pytest.skip("the C++ extension is not built")
    else:
        monkeypatch.setattr(density_module, "_cpu_kernels", lambda t: None)
    return request.param


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("B,D,dtype", [(1, 1, torch.float64), (5, 3, torch.float64), (64, 17, torch.float64),
                                       (300, 130, torch.float64), (9, 4, torch.float32)])
def test_values_and_gradients_match_reference(impl, clip, B, D, dtype):
    """Bigger than one thread's share (300 x 130) too; float32 to float32 tolerances."""
    x, raw = draw(B, D, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    gz, gl = torch.randn(B, D, generator=g, dtype=x.dtype), torch.randn(B, generator=g, dtype=x.dtype)
    out = []
    for f in (reference, affine_density):
        xx, rr = x.clone().requires_grad_(), raw.clone().requires_grad_()
        z, ld = f(xx, rr, clip)
        torch.autograd.backward((z, ld), (gz, gl))
        out.append((z, ld, xx.grad, rr.grad))
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {}
    for name, r, f in zip(("z", "logdet", "dx", "draw"), *out):
        torch.testing.assert_close(f, r, **tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("clip", [True, False])
def test_gradcheck_and_second_derivatives(impl, clip):
    x, raw = draw(3, 4, spread=1.0)
    x.requires_grad_()
    raw.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: affine_density(a, b, clip), (x, raw))
    assert torch.autograd.gradgradcheck(lambda a, b: affine_density(a, b, clip), (x, raw))


def test_one_output_used_and_float32(impl):
    """Only z, or only the log-determinant, reaches the loss (the other gradient is None)."""
    x, raw = draw(6, 5, dtype=torch.float32)
    for pick in (0, 1):
        grads = []
        for f in (reference, affine_density):
            xx, rr = x.clone().requires_grad_(), raw.clone().requires_grad_()
            f(xx, rr, True)[pick].square().sum().backward()
            grads.append((xx.grad, rr.grad))
        (rx, rr_), (fx, fr) = grads
        assert (rx is None) == (fx is None) or torch.count_nonzero(rx if fx is None else fx) == 0
        torch.testing.assert_close(fr, rr_)


def test_raw_views_and_other_dtypes(impl):
    """A raw view with an odd storage offset or strides (the complex view cannot take it) and
    bfloat16 (no complex type) give the reference's values and gradients."""
    x, big = draw(4, 3, seed=2)
    raw = big.new_zeros(4, 7)[:, 1:]  # storage offset 1
    raw.copy_(big)
    strided = torch.cat([big, big], 1)[:, ::2].contiguous().t().contiguous().t()  # column-major
    for r in (raw, strided, big.to(torch.bfloat16)):
        xx = x.to(r.dtype)
        torch.testing.assert_close(affine_density(xx, r, True), reference(xx, r, True))
        rr = r.detach().clone().requires_grad_()
        affine_density(xx, rr, True)[0].sum().backward()
        gr = rr.grad
        rr.grad = None
        reference(xx, rr, True)[0].sum().backward()
        torch.testing.assert_close(gr, rr.grad)


def test_nonfinite_values_propagate_as_in_the_reference(impl):
    x, raw = draw(3, 2)
    x[0, 1] = float("nan")
    raw[1, 2] = float("inf")
    raw[2, 1] = -float("inf")
    torch.testing.assert_close(affine_density(x, raw, True), reference(x, raw, True), equal_nan=True)


def test_compiled_transform_traces_the_reference_ops():
    x, raw = draw(4, 3)
    f = torch.compile(lambda a, b: affine_density(a, b, True), fullgraph=True, backend="eager")
    torch.testing.assert_close(f(x, raw), reference(x, raw, True))


@SKIP_WITHOUT_FAST
@backends
def test_made_transform_matches_reference(backend):
    """MADE.transform on a fast backend (through affine_density) gives the reference's values and
    parameter gradients."""
    r, f = pair("gaussian-flow", backend)
    x, ctx = data(r, 7)
    grads = []
    for model in (r, f):
        z, ld = model.transform(x, ctx)
        (z.square().sum() + ld.sum()).backward()
        grads.append([(n, p.grad) for n, p in model.named_parameters()])
        torch.testing.assert_close(z, r.transform(x, ctx)[0])
    for (name, gr), (_, gf) in zip(*grads):
        torch.testing.assert_close(gf, gr, msg=lambda m: f"d{name}: {m}")


def test_kernels_check_what_they_index():
    ext = density_module._cpu_kernels(torch.zeros(1))
    if ext is None:
        pytest.skip("the C++ extension is not built")
    x, raw = draw(3, 4)
    with pytest.raises(ValueError, match="raw must have shape"):
        ext.affine_density_forward(x, raw[:, :7], True)
    with pytest.raises(ValueError, match="float32 or float64"):
        ext.affine_density_forward(x.half(), raw.half(), True)
    z, _, inv_sigma, centered = ext.affine_density_forward(x, raw, True)
    with pytest.raises(ValueError, match="grad_z must have z's shape"):
        ext.affine_density_backward(z[:2], None, raw, inv_sigma, centered, True, True)
    with pytest.raises(ValueError, match="grad_logdet must be"):
        ext.affine_density_backward(None, z, raw, inv_sigma, centered, True, True)
    with pytest.raises(ValueError, match="inv_sigma must have"):
        ext.affine_density_backward(z, None, raw, inv_sigma[:2], centered, True, True)


def test_raw_on_another_device_is_refused():
    x, raw = draw(3, 2)
    with pytest.raises(ValueError, match="raw is on meta but x is on cpu"):
        affine_density(x, raw.to("meta"), True)


def test_second_derivatives_when_one_input_is_constant(impl):
    """create_graph=True with x data (no grad; the usual case) or raw constant: the gradients of
    the inputs that need one, differentiable again, as the reference's."""
    x, raw = draw(4, 3, spread=1.0)
    xr = x.clone().requires_grad_()
    rr = raw.clone().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda b: affine_density(x, b, True), (rr,))
    assert torch.autograd.gradgradcheck(lambda a: affine_density(a, raw, True), (xr,))
    for f in (affine_density, reference):
        r = raw.clone().requires_grad_()
        z, ld = f(x, r, True)
        (g,) = torch.autograd.grad((z.square().sum() - ld.sum()), [r], create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), [r])
        if f is affine_density:
            got = (g, gg)
        else:
            torch.testing.assert_close(got[0], g)
            torch.testing.assert_close(got[1], gg)


def test_editing_z_in_place_after_the_call_keeps_the_backward(impl):
    """z is not saved for the backward (the reference does not save it either)."""
    x, raw = draw(5, 3)
    grads = []
    for f in (reference, affine_density):
        r = raw.clone().requires_grad_()
        z, ld = f(x, r, True)
        w = z.detach().clone()
        z.mul_(2.0)  # the caller reuses the output buffer
        ((w * z).sum() + ld.sum()).backward()
        grads.append(r.grad)
    torch.testing.assert_close(grads[1], grads[0])


@SKIP_WITHOUT_FAST
def test_made_transform_first_order_with_create_graph_on_data():
    """A loss on a flow's density, differentiated with create_graph=True (as for a gradient
    penalty) with x plain data: works on the kernels' backend as on the reference."""
    import armodel_fast as af
    grads = []
    base = af.MADE(4, [16], out="gaussian", K=1, dtype=torch.float64)
    for backend in ("reference", "cpp"):
        m = af.MADE(4, [16], out="gaussian", K=1, backend=backend, dtype=torch.float64)
        m.load_state_dict(base.state_dict())
        x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        z, ld = m.transform(x)
        grads.append(torch.autograd.grad((0.5 * z.square().sum(-1) - ld).mean(), list(m.parameters()),
                                         create_graph=True))
    for gr, gf in zip(*grads):
        torch.testing.assert_close(gf, gr)
