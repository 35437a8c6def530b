"""MADE.inverse on the fast backends against the reference: values, gradients (implicit
differentiation in one reverse sweep, ops/made/inverse_grad.py), gradcheck, and the forward's mask set."""
import pytest
import torch

import armodel_fast as af
from armodel_fast.ops.made.inverse_grad import _sweep as _torch_sweep
from made_cases import SKIP_WITHOUT_FAST, backends, data, pair

pytestmark = SKIP_WITHOUT_FAST


@backends
def test_inverse_matches_reference(backend):
    ref, fast = pair("gaussian-flow", backend)
    z, ctx = data(ref, 8)
    xr, ldr = ref.inverse(z, ctx)
    xf, ldf = fast.inverse(z, ctx)
    torch.testing.assert_close(xf, xr)
    torch.testing.assert_close(ldf, ldr)
    zz, ld = fast.transform(xf, ctx)
    torch.testing.assert_close(zz, z)
    torch.testing.assert_close(ld, -ldf)


@backends
def test_inverse_gradients_match_reference(backend):
    """The fast inverse is one pass forward; its gradients (implicit differentiation) equal the
    reference's autograd through its D passes, for z, context and every parameter."""
    ref, fast = pair("gaussian-flow", backend)
    z, ctx = data(ref, 6)
    grads = []
    for model in (ref, fast):
        zz, cc = z.clone().requires_grad_(), ctx.clone().requires_grad_()
        x, logdet = model.inverse(zz, cc)
        assert x.requires_grad and logdet.requires_grad
        w = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
        loss = (w * x).sum() + (x ** 2).sum() + 0.7 * logdet.sum()
        grads.append(torch.autograd.grad(loss, [zz, cc] + list(model.parameters()), allow_unused=True))
    for name, gr, gf in zip(["z", "context"] + [n for n, _ in ref.named_parameters()], *grads):
        assert (gr is None) == (gf is None), name
        if gr is not None:
            torch.testing.assert_close(gf, gr, rtol=1e-7, atol=1e-9, msg=lambda m: f"d{name}: {m}")
    with torch.no_grad():  # no graph: the one-pass sampler alone
        x, _ = fast.inverse(z, ctx)
    assert not x.requires_grad


@backends
def test_inverse_gradient_gradcheck(backend):
    _, fast = pair("gaussian-flow", backend, D=4)
    z, ctx = data(fast, 3)
    z.requires_grad_()
    assert torch.autograd.gradcheck(lambda z_: fast.inverse(z_, ctx), (z,), eps=1e-6, atol=1e-7)


@backends
def test_inverse_gradients_use_the_forwards_mask(backend):
    """next_mask() between inverse() and backward(): the gradients are still those of the mask
    set the inverse ran with (as the reference's recorded graph is)."""
    grads = []
    for b in ("reference", backend):
        model = af.MADE(4, [12], out="gaussian", num_masks=3, order="random", seed=3, dtype=torch.float64,
                        backend=b)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
        z = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        x, logdet = model.inverse(z)
        model.next_mask()
        grads.append(torch.autograd.grad((x ** 2).sum() + logdet.sum(), list(model.parameters())))
        assert int(model.mask_index) == 1
    for gr, gf in zip(*grads):
        torch.testing.assert_close(gf, gr)


FLOW_VARIANTS = {
    "one-layer-elu-raw": dict(hidden=[9], activation="elu", scale="raw"),
    "three-layers-tanh-direct": dict(hidden=[8, 6, 7], activation="tanh", direct=True, order="random"),
    "wide-relu-context-masks": dict(hidden=[20, 15], context_dim=3, num_masks=2, order="random"),
    "narrow-hidden": dict(hidden=[2, 3], direct=True, context_dim=1),
    "residual-preact-tanh-context": dict(hidden=[8, 8], residual="preact", activation="tanh", context_dim=2),
    "residual-linear-widths-direct": dict(hidden=[6, 9, 9], residual="linear", direct=True, order="random"),
}


@backends
@pytest.mark.parametrize("variant", list(FLOW_VARIANTS))
@pytest.mark.parametrize("D", [1, 2, 9])
@pytest.mark.parametrize("sweep", ["extension", "torch"])
def test_inverse_adjoint_sweep_matches_reference(backend, variant, D, sweep, monkeypatch):
    """The backward's reverse sweep over degrees (ops/made/inverse_grad.py) on other layer counts,
    activations, scales, narrow layers (degrees with no unit) and D=1: the gradients equal the
    reference's autograd through its D passes. ``sweep``: the extension's C++ sweep (what runs on
    the CPU) or the torch form (other devices, no extension), each checked to be the one that ran."""
    from armodel_fast.ops.made import inverse_grad
    torch_sweeps = []
    monkeypatch.setattr(inverse_grad, "_sweep", lambda *a: torch_sweeps.append(1) or _torch_sweep(*a))
    if sweep == "torch":
        monkeypatch.setattr(inverse_grad, "cpu_extension", lambda name, t: None)
    elif inverse_grad.cpu_extension("made_inverse_sweep", torch.zeros(1)) is None:
        pytest.skip("the extension is not built")
    kw = dict(FLOW_VARIANTS[variant])
    hidden = kw.pop("hidden")
    ref = af.MADE(D, hidden, out="gaussian", seed=3, dtype=torch.float64, **kw)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    fast = af.MADE(D, hidden, out="gaussian", seed=3, dtype=torch.float64, backend=backend, **kw)
    fast.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(7)
    z = torch.randn(5, D, generator=g, dtype=torch.float64)
    ctx = torch.randn(5, ref.context_dim, generator=g, dtype=torch.float64) if ref.context_dim else None
    grads = []
    for model in (ref, fast):
        zz = z.clone().requires_grad_()
        cc = None if ctx is None else ctx.clone().requires_grad_()
        x, logdet = model.inverse(zz, cc)
        loss = (x.sin() * torch.arange(1, D + 1)).sum() + 0.3 * logdet.square().sum()
        inputs = [zz] + ([] if cc is None else [cc]) + list(model.parameters())
        grads.append(torch.autograd.grad(loss, inputs, allow_unused=True))
    names = ["z"] + ([] if ctx is None else ["context"]) + [n for n, _ in ref.named_parameters()]
    for name, gr, gf in zip(names, *grads):
        assert (gr is None) == (gf is None), name
        if gr is not None:
            torch.testing.assert_close(gf, gr, rtol=1e-7, atol=1e-9, msg=lambda m: f"d{name}: {m}")
    assert bool(torch_sweeps) == (sweep == "torch")
