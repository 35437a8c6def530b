"""armodel_fast.flows.zuko passes the checks of zuko's own flow and transform tests
(rewritten here): shapes with batched / unbatched contexts, log_prob and sampling,
invertibility, log|det| against the autograd Jacobian, autoregressive structure,
save / load, gradients reaching every parameter; and bad input is refused as by af.MADE."""
import pytest
import torch

from flows_checks import (assert_autoregressive, assert_grads_reach_every_parameter, assert_ladj_matches_jacobian,
                          backends, reload)

zuko = pytest.importorskip("zuko", reason="zuko is not installed (pip install 'armodel-fast[zuko]')")
afz = pytest.importorskip("armodel_fast.flows.zuko")


def maf(backend, features=3, context=5, **kw):
    torch.manual_seed(0)
    return afz.MAF(features, context, transforms=3, hidden_features=(16, 16), backend=backend, **kw).double()


@backends
def test_shapes_log_prob_and_sampling(backend):
    flow = maf(backend)
    x, c = torch.randn(256, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    assert flow(c).log_prob(x).shape == (256,)  # unbatched context, batched x
    assert flow(c.expand(256, 5)).log_prob(x).shape == (256,)
    assert flow(c).sample((32,)).shape == (32, 3)
    assert flow(c.expand(4, 5)).sample((32,)).shape == (32, 4, 3)  # batched context: batch shape (4,)
    z, lp = flow(c).rsample_and_log_prob((8,))
    assert z.shape == (8, 3) and lp.shape == (8,)
    torch.testing.assert_close(lp, flow(c).log_prob(z))
    assert flow(torch.randn(2, 7, 5, dtype=torch.float64)).log_prob(torch.randn(2, 7, 3, dtype=torch.float64)).shape \
        == (2, 7)


@backends
def test_unconditional_flow(backend):
    flow = maf(backend, context=0)
    x = flow().sample((16,))
    assert x.shape == (16, 3) and flow().log_prob(x).shape == (16,)


@backends
def test_invertible_and_ladj_matches_jacobian(backend):
    flow = maf(backend, features=4)
    c = torch.randn(5, dtype=torch.float64)
    t = flow(c).transform
    x = torch.randn(64, 4, dtype=torch.float64)
    z = t(x)
    torch.testing.assert_close(t.inv(z), x, atol=1e-6, rtol=1e-6)
    z2, ladj = t.call_and_ladj(x)
    torch.testing.assert_close(z2, z)
    x3, ladj_inv = t.inv.call_and_ladj(z)
    torch.testing.assert_close(x3, x, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ladj_inv, -ladj, atol=1e-6, rtol=1e-6)
    assert_ladj_matches_jacobian(t, ladj[0], x[0])
    assert_ladj_matches_jacobian(t.inv, ladj_inv[1], z[1])


@backends
@pytest.mark.parametrize("rank", [None, [2, 0, 3, 1]])
def test_transform_is_autoregressive_in_zukos_order(backend, rank):
    torch.manual_seed(1)
    t = afz.MaskedAutoregressiveTransform(4, 2, order=rank, hidden_features=(32, 32), backend=backend).double()
    c = torch.randn(2, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(t(c), torch.randn(4, dtype=torch.float64))
    rank = torch.arange(4) if rank is None else torch.tensor(rank)
    assert_autoregressive(J, torch.argsort(rank))  # zuko: x_i depends on x_j iff rank[j] < rank[i]


@backends
def test_gradients_reach_every_parameter_both_ways(backend):
    flow = maf(backend)
    c = torch.randn(5, dtype=torch.float64)
    assert_grads_reach_every_parameter(flow, -flow(c).log_prob(torch.randn(32, 3, dtype=torch.float64)).mean())
    assert_grads_reach_every_parameter(flow, flow(c).rsample((16,)).square().sum())


@backends
def test_save_and_load(backend):
    flow = maf(backend)
    x, c = torch.randn(8, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    fresh = reload(flow, lambda: afz.MAF(3, 5, transforms=3, hidden_features=(16, 16), backend=backend).double())
    torch.testing.assert_close(fresh(c).log_prob(x), flow(c).log_prob(x))
    z = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(fresh(c).transform.inv(z), flow(c).transform.inv(z))


@backends
def test_same_flow_as_zukos_given_the_same_layers(backend):
    """A zuko MAF whose MaskedMLPs compute our MADE's (mu, log sigma) gives the same log_prob."""
    flow = maf(backend)
    x, c = torch.randn(6, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    lp = flow(c).log_prob(x)
    base = torch.distributions.Normal(0.0, 1.0)
    z, ladj = x, torch.zeros(6, dtype=torch.float64)
    for layer in flow.transform.transforms:  # by hand: each layer's affine map from MADE's outputs
        _, mu, ls = layer.made(z, c)  # log sigma already soft-clipped
        s = ls[..., 0]
        z = (z - mu[..., 0]) * torch.exp(-s)
        ladj = ladj - s.sum(-1)
    torch.testing.assert_close(lp, base.log_prob(z).sum(-1) + ladj)


@pytest.mark.parametrize("bad, match", [
    (dict(x=torch.randn(4, 2)), "x"),                       # wrong feature count
    (dict(c=None), "context"),                              # context missing
    (dict(c=torch.randn(4)), "context"),                    # context of the wrong size
    (dict(x=torch.tensor([[0.0, float("nan"), 1.0]])), "finite"),
])
def test_bad_input_is_named(bad, match):
    flow = afz.MAF(3, 5, transforms=2, hidden_features=(8,), backend="reference")
    x, c = bad.get("x", torch.randn(4, 3)), bad.get("c", torch.randn(5))
    with pytest.raises(ValueError, match=match):
        flow(c).log_prob(x)


def test_unsupported_arguments_are_refused():
    with pytest.raises(ValueError, match="passes"):
        afz.MaskedAutoregressiveTransform(4, passes=2)
    with pytest.raises(ValueError, match="univariate"):
        afz.MaskedAutoregressiveTransform(4, univariate=zuko.transforms.MonotonicRQSTransform, shapes=((8,),) * 3)


@backends
@pytest.mark.parametrize("hidden", [(16, 16), (8, 12)])
def test_residual_blocks(backend, hidden):
    """residual=True: zuko's residual MaskedMLP (a first layer, then per hidden entry a block
    h + W2 act(W1 h), a projection where the width changes): as many parameters of the same shapes
    as zuko's own transform, invertible, log|det| = the Jacobian's, autoregressive, trainable."""
    torch.manual_seed(0)
    ours = afz.MaskedAutoregressiveTransform(4, 0, hidden_features=hidden, residual=True, backend=backend).double()
    theirs = zuko.flows.MaskedAutoregressiveTransform(4, 0, hidden_features=hidden, residual=True)
    shapes = lambda m: sorted(tuple(p.shape) for p in m.parameters())  # noqa: E731
    assert shapes(ours) == shapes(theirs)
    t = ours()
    x = torch.randn(16, 4, dtype=torch.float64)
    z, ladj = t.call_and_ladj(x)
    torch.testing.assert_close(t.inv(z), x, atol=1e-6, rtol=1e-6)
    J = assert_ladj_matches_jacobian(t, ladj[0], x[0])
    assert_autoregressive(J, torch.arange(4))
    flow = afz.MAF(4, 3, transforms=2, hidden_features=hidden, residual=True, backend=backend).double()
    c = torch.randn(3, dtype=torch.float64)
    assert_grads_reach_every_parameter(flow, -flow(c).log_prob(x).mean() + flow(c).rsample((4,)).square().mean())


def test_zukos_transform_attributes():
    """order (the rank of each feature), passes, univariate, shapes and total read as on zuko's transform."""
    for order in (None, torch.randperm(6, generator=torch.Generator().manual_seed(1))):
        ours, theirs = afz.MaskedAutoregressiveTransform(6, 2, order=order), zuko.flows.MaskedAutoregressiveTransform(
            6, 2, order=order)
        assert torch.equal(ours.order, theirs.order)
        for name in ("passes", "univariate", "shapes", "total"):
            assert getattr(ours, name) == getattr(theirs, name), name


@backends
def test_whole_flow_pickles(backend):
    """torch.save(flow) / pickle of the whole model, as zuko's flows allow (not only the state_dict)."""
    import io
    import pickle
    flow, c, x = maf(backend), torch.randn(5, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    buf = io.BytesIO()
    torch.save(flow, buf)
    buf.seek(0)
    for copy in (pickle.loads(pickle.dumps(flow)), torch.load(buf, weights_only=False)):
        torch.testing.assert_close(copy(c).log_prob(x), flow(c).log_prob(x), rtol=0, atol=0)
