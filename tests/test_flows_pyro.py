"""armodel_fast.flows.pyro passes the checks of pyro's transform tests for AffineAutoregressive
(rewritten here): inverse (with and without the cache), log|det| against the autograd Jacobian,
autoregressive structure, shapes with extra batch dimensions, conditional transforms with an
unbatched context, save / load, gradients; bad input."""
import pytest
import torch
from torch import nn

from flows_checks import (assert_autoregressive, assert_grads_reach_every_parameter, assert_ladj_matches_jacobian,
                          backends, reload)

pyro = pytest.importorskip("pyro", reason="pyro-ppl is not installed (pip install 'armodel-fast[pyro]')")
dist = pytest.importorskip("pyro.distributions")
afp = pytest.importorskip("armodel_fast.flows.pyro")

D = 5


def iaf(backend, **kw):
    torch.manual_seed(0)
    return afp.affine_autoregressive(D, hidden_dims=[16, 16], backend=backend, **kw).double()


def base(shape=(D,)):
    return dist.Normal(torch.zeros(shape, dtype=torch.float64), torch.ones(shape, dtype=torch.float64)).to_event(1)


@backends
def test_inverse_with_and_without_cache(backend):
    t = iaf(backend)
    x = torch.randn(8, D, dtype=torch.float64)
    y = t(x)
    assert t.inv(y) is x  # pyro's cache: the forward's input comes back
    t.clear_cache()
    torch.testing.assert_close(t.inv(y.clone()), x, atol=1e-6, rtol=1e-6)


@backends
def test_ladj_matches_jacobian_and_is_autoregressive(backend):
    t = iaf(backend)
    x = torch.randn(D, dtype=torch.float64)
    y = t(x)
    J = assert_ladj_matches_jacobian(lambda v: t._call(v), t.log_abs_det_jacobian(x, y), x)
    assert_autoregressive(J, t.arn.order)
    t.clear_cache()
    yy = y.detach().clone()
    xx = t.inv(yy)
    assert_ladj_matches_jacobian(lambda v: t._inverse(v), -t.log_abs_det_jacobian(xx, yy), yy)


@backends
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_shapes_with_batch_dimensions(backend, batch):
    t = iaf(backend)
    for flow in (dist.TransformedDistribution(base(batch + (D,)), [t]),      # IAF: sampling is the forward
                 dist.TransformedDistribution(base(batch + (D,)), [t.inv])):  # MAF: sampling is the inverse
        s = flow.rsample((4,))
        assert s.shape == (4,) + batch + (D,)
        assert flow.log_prob(s).shape == (4,) + batch
        t.clear_cache()
        assert flow.log_prob(s.clone()).shape == (4,) + batch


@backends
def test_conditional_with_unbatched_and_batched_context(backend):
    torch.manual_seed(0)
    t = afp.conditional_affine_autoregressive(D, 3, hidden_dims=[16], backend=backend).double()
    c = torch.randn(3, dtype=torch.float64)
    flow = dist.ConditionalTransformedDistribution(base(), [t])
    s = flow.condition(c).rsample((6,))
    assert s.shape == (6, D) and flow.condition(c).log_prob(s).shape == (6,)
    cb = torch.randn(6, 3, dtype=torch.float64)
    x = torch.randn(6, D, dtype=torch.float64)
    tc = t.condition(cb)
    y = tc(x)
    tc.clear_cache()
    torch.testing.assert_close(tc.inv(y.clone()), x, atol=1e-6, rtol=1e-6)
    J = assert_ladj_matches_jacobian(lambda v: t.condition(cb[0])._call(v), tc.log_abs_det_jacobian(x, y)[0], x[0])
    assert_autoregressive(J, t.nn.order)


@backends
def test_gradients_reach_every_parameter_both_ways(backend):
    t = iaf(backend)
    maf = dist.TransformedDistribution(base(), [t.inv])
    assert_grads_reach_every_parameter(t, -maf.log_prob(torch.randn(16, D, dtype=torch.float64)).mean())
    assert_grads_reach_every_parameter(t, maf.rsample((16,)).square().sum())


@backends
def test_save_load_and_pyro_network(backend):
    t = iaf(backend)
    x = torch.randn(4, D, dtype=torch.float64)
    fresh = reload(t, lambda: afp.AffineAutoregressive(af_made_like(t, backend)))
    torch.testing.assert_close(fresh(x), t(x))
    arn = pyro.nn.AutoRegressiveNN(D, [12, 12], nonlinearity=nn.ELU())
    from_pyro = afp.AffineAutoregressive(arn, backend=backend)
    assert from_pyro.arn.hidden == [12, 12] and from_pyro.arn.activation == "elu"
    assert torch.equal(from_pyro.arn.order, arn.permutation)


def af_made_like(t, backend):
    from armodel_fast.flows.core import affine_made
    return affine_made(D, t.arn.hidden, 0, order=t.arn.order, backend=backend, seed=t.arn.seed).double()


@pytest.mark.parametrize("x, match", [(torch.randn(4, D + 1), "x"), (torch.full((4, D), float("nan")), "finite")])
def test_bad_input_is_named(x, match):
    t = afp.affine_autoregressive(D, hidden_dims=[8], backend="reference")
    with pytest.raises(ValueError, match=match):
        t(x)


def test_conditional_bad_context_is_named():
    t = afp.conditional_affine_autoregressive(D, 3, hidden_dims=[8], backend="reference")
    with pytest.raises(ValueError, match="context"):
        t.condition(torch.randn(2))(torch.randn(4, D))
    with pytest.raises(ValueError, match="context"):
        afp.ConditionalAffineAutoregressive(afp.affine_autoregressive(D).arn)


def test_pyro_transform_options():
    """pyro's own options: its defaults are accepted (positionally too, in pyro's order), the
    rest raise naming the argument; a pyro network with skip connections is refused, not run
    without them."""
    arn = pyro.nn.AutoRegressiveNN(D, [8])
    afp.AffineAutoregressive(arn, -5.0, 3.0, 2.0, False)
    afp.affine_autoregressive(D, hidden_dims=[8], stable=False, log_scale_min_clip=-5.0, log_scale_max_clip=3.0,
                              sigmoid_bias=1.5)  # sigmoid_bias acts only in pyro's stable form
    for kw, name in (({"stable": True}, "stable"), ({"log_scale_min_clip": -4.0}, "log_scale_min_clip"),
                     ({"log_scale_max_clip": 2.0}, "log_scale_max_clip")):
        with pytest.raises(ValueError, match=name):
            afp.affine_autoregressive(D, hidden_dims=[8], **kw)
        with pytest.raises(ValueError, match=name):
            afp.conditional_affine_autoregressive(D, 3, hidden_dims=[8], **kw)
    with pytest.raises(ValueError, match="skip_connections"):
        afp.AffineAutoregressive(pyro.nn.AutoRegressiveNN(D, [8], skip_connections=True))
    with pytest.raises(ValueError, match="skip_connections"):
        afp.ConditionalAffineAutoregressive(pyro.nn.ConditionalAutoRegressiveNN(D, 3, [8], skip_connections=True))
