"""armodel_fast.flows.nflows passes the checks of nflows' autoregressive transform tests
(rewritten here): forward / inverse shapes and consistency, log|det| against the autograd
Jacobian, the autoregressive property, the MAF flow, save / load, gradients; bad input."""
import pytest
import torch
import torch.nn.functional as F

from flows_checks import (assert_autoregressive, assert_grads_reach_every_parameter, assert_ladj_matches_jacobian,
                          backends, reload)

pytest.importorskip("nflows", reason="nflows is not installed (pip install 'armodel-fast[nflows]')")
afn = pytest.importorskip("armodel_fast.flows.nflows")


def transform(backend, features=6, context=None, **kw):
    torch.manual_seed(0)
    return afn.MaskedAffineAutoregressiveTransform(features, 24, context_features=context, backend=backend,
                                                   **kw).double()


@backends
@pytest.mark.parametrize("context", [None, 3])
def test_forward_inverse_shapes_and_consistency(backend, context):
    t = transform(backend, context=context)
    x = torch.randn(10, 6, dtype=torch.float64)
    c = None if context is None else torch.randn(10, context, dtype=torch.float64)
    z, ld = t(x, c)
    assert z.shape == (10, 6) and ld.shape == (10,)
    x_back, ld_inv = t.inverse(z, c)
    torch.testing.assert_close(x_back, x, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ld + ld_inv, torch.zeros(10, dtype=torch.float64), atol=1e-6, rtol=0)


@backends
def test_ladj_matches_jacobian_and_is_autoregressive(backend):
    t = transform(backend, context=2)
    x, c = torch.randn(6, dtype=torch.float64), torch.randn(1, 2, dtype=torch.float64)
    _, ld = t(x[None], c)
    J = assert_ladj_matches_jacobian(lambda v: t(v[None], c)[0][0], ld[0], x)
    assert_autoregressive(J, torch.arange(6))  # nflows: natural order
    z, _ = t(x[None], c)
    _, ld_inv = t.inverse(z, c)
    assert_ladj_matches_jacobian(lambda v: t.inverse(v[None], c)[0][0], ld_inv[0], z[0])


@backends
@pytest.mark.parametrize("activation", [F.relu, F.elu, torch.tanh])
def test_activations(backend, activation):
    t = transform(backend, activation=activation, num_blocks=1)
    x = torch.randn(5, 6, dtype=torch.float64)
    torch.testing.assert_close(t.inverse(t(x)[0])[0], x, atol=1e-6, rtol=1e-6)


@backends
def test_maf_flow_log_prob_sample_and_gradients(backend):
    torch.manual_seed(0)
    flow = afn.MaskedAutoregressiveFlow(5, 16, num_layers=3, num_blocks_per_layer=2, backend=backend)
    x = torch.randn(12, 5)  # fp32: nflows' StandardNormal samples in the default dtype
    lp = flow.log_prob(x)
    assert lp.shape == (12,)
    s, slp = flow.sample_and_log_prob(7)
    assert s.shape == (7, 5)
    torch.testing.assert_close(slp, flow.log_prob(s), atol=1e-4, rtol=1e-4)
    assert_grads_reach_every_parameter(flow, -lp.mean())
    assert_grads_reach_every_parameter(flow, flow.sample(9).square().sum())
    fresh = reload(flow, lambda: afn.MaskedAutoregressiveFlow(5, 16, 3, 2, backend=backend))
    torch.testing.assert_close(fresh.log_prob(x), lp)


@backends
def test_conditional_flow(backend):
    torch.manual_seed(0)
    flow = afn.MaskedAutoregressiveFlow(4, 16, 2, 2, context_features=3, backend=backend)
    c = torch.randn(5, 3)
    assert flow.log_prob(torch.randn(5, 4), c).shape == (5,)
    assert flow.sample(6, c).shape == (5, 6, 4)  # nflows: num_samples per context row


@pytest.mark.parametrize("bad, match", [
    (dict(x=torch.randn(4, 5)), "x"),
    (dict(c=None), "context"),
    (dict(c=torch.randn(4, 2)), "context"),
    (dict(x=torch.full((4, 6), float("nan"))), "finite"),
])
def test_bad_input_is_named(bad, match):
    t = afn.MaskedAffineAutoregressiveTransform(6, 8, context_features=3, backend="reference")
    with pytest.raises(ValueError, match=match):
        t(bad.get("x", torch.randn(4, 6)), bad.get("c", torch.randn(4, 3)))


def test_unsupported_arguments_are_refused():
    with pytest.raises(ValueError, match="random masks"):  # as nflows
        afn.MaskedAffineAutoregressiveTransform(4, 8, use_residual_blocks=True, random_mask=True)
    with pytest.raises(ValueError, match="num_blocks"):
        afn.MaskedAffineAutoregressiveTransform(4, 8, num_blocks=0)
    assert len(afn.MaskedAffineAutoregressiveTransform(4, 8, num_blocks=0, use_residual_blocks=False)
               .autoregressive_net.layers) == 1  # nflows' first layer alone
    with pytest.raises(ValueError, match="dropout"):
        afn.MaskedAffineAutoregressiveTransform(4, 8, dropout_probability=0.1)
    with pytest.raises(ValueError, match="batch_norm"):
        afn.MaskedAffineAutoregressiveTransform(4, 8, use_batch_norm=True)


@backends
@pytest.mark.parametrize("residual", [True, False])
def test_residual_blocks_as_nflows(backend, residual):
    """use_residual_blocks (nflows' default, True): nflows' pre-activation blocks h + W2 act(W1 act(h)),
    their last layer initialised within +-1e-3 as nflows does; as many parameters of the same shapes as
    nflows' own transform; invertible, log|det| = the Jacobian's, autoregressive, trainable."""
    from nflows.transforms import MaskedAffineAutoregressiveTransform as Theirs
    ours = transform(backend, use_residual_blocks=residual)
    assert ours.autoregressive_net.residual == ("preact" if residual else None)
    theirs = Theirs(6, 24, num_blocks=2, use_residual_blocks=residual)
    shapes = lambda m: sorted(tuple(p.shape) for p in m.parameters())  # noqa: E731
    assert shapes(ours) == shapes(theirs)
    if residual:
        last = [layer for layer, f in zip(ours.autoregressive_net.layers, ours.autoregressive_net._program) if f & 4]
        assert len(last) == 2 and all(float(layer.weight.detach().abs().max()) <= 1e-3 for layer in last)
    x = torch.randn(8, 6, dtype=torch.float64)
    z, ld = ours(x)
    x_back, ld_inv = ours.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-6, rtol=1e-6)
    J = assert_ladj_matches_jacobian(lambda v: ours(v[None])[0][0], ld[0], x[0])
    assert_autoregressive(J, torch.arange(6))
    assert_grads_reach_every_parameter(ours, -ours(x)[1].mean() + ours.inverse(z)[0].square().mean())
