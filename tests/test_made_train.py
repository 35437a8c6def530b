"""A MADE's training forward as one autograd node on the cpp backend (ops/masked_linear/chain.py): the
values and gradients of the reference (and of the chained per-layer path) wherever it applies,
the chained path where it does not, and the per-layer semantics inside it (NaN/inf, a mask
switch before the backward, gradients of gradients, batched gradients, frozen parameters)."""
import warnings

import pytest
import torch

import armodel_fast as af
from armodel_fast import _ext
from armodel_fast.ops.masked_linear import launchers
from made_cases import graph_nodes as nodes

AVX512 = _ext.get_ext() is not None and launchers._train_kernels() == "avx512"
pytestmark = pytest.mark.skipif(not AVX512, reason="the one-node training path runs the AVX-512 training "
                                                   f"kernels, which do not run here:\n{af.explain('masked_linear')}")
TOL = {"rtol": 1e-4, "atol": 1e-5}


def pair(seed=0, **kw):
    """(cpp model, reference model with the same state)."""
    torch.manual_seed(seed)
    fast = af.MADE(backend="cpp", **kw)
    ref = af.MADE(backend="reference", **kw)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def data(model, B=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    if model.out == "bernoulli":
        return (torch.rand(B, model.D, generator=g) < 0.5).float()
    if model.out == "categorical":
        return torch.randint(0, model.K, (B, model.D), generator=g)
    return torch.randn(B, model.D, generator=g)


def compare(fast, ref, x, fused, x_grad=False):
    """log_prob and every gradient of fast equal ref's; whether fast ran a one-node chain is ``fused``
    (None: not asserted)."""
    xs = [x.clone().requires_grad_(x_grad) for _ in range(2)]
    lp_fast, lp_ref = fast.log_prob(xs[0]), ref.log_prob(xs[1])
    assert fused is None or ("_MaskedChainBackward" in nodes(lp_fast)) == fused, nodes(lp_fast)
    torch.testing.assert_close(lp_fast, lp_ref, **TOL)
    g = torch.linspace(-1, 2, x.shape[0])
    lp_fast.backward(g)
    lp_ref.backward(g)
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, **TOL, msg=name)
    if x_grad:
        torch.testing.assert_close(xs[0].grad, xs[1].grad, **TOL)


@pytest.mark.parametrize("hidden", [[16], [24, 40], [30, 30, 20]])
@pytest.mark.parametrize("activation", ["relu", "elu", "tanh"])
def test_matches_the_reference(hidden, activation):
    fast, ref = pair(D=12, hidden=hidden, activation=activation)
    compare(fast, ref, data(fast), fused=True)


@pytest.mark.parametrize("kw", [dict(out="categorical", K=3), dict(out="gaussian", K=2), dict(out="gaussian", K=1)])
def test_every_head_and_gradients_of_x(kw):
    fast, ref = pair(D=9, hidden=[32], **kw)
    compare(fast, ref, data(fast), fused=True, x_grad=kw["out"] == "gaussian")


@pytest.mark.parametrize("kw", [dict(direct=True), dict(context_dim=3), dict(order="random"),
                                dict(residual="preact", hidden=[16, 16, 16])])
def test_other_made_layouts(kw):
    """Direct layer, context, a residual program: the chained path (its masked layers through
    ``masked_linear``, one node each where they take the training kernels); a random order (its
    input and output layers unsorted): the one node, the kernels reading through the sorts."""
    kw = {"D": 10, "hidden": [20], **kw}
    context = kw.get("context_dim", 0)
    fast, ref = pair(**kw)
    x = data(fast)
    if context:
        c = torch.randn(x.shape[0], context)
        torch.testing.assert_close(fast.log_prob(x, c), ref.log_prob(x, c), **TOL)
        return
    compare(fast, ref, x, fused=AVX512 if "order" in kw else None)


def test_no_graph_and_frozen_parameters():
    """Without a graph the chained path runs (evaluation); a frozen layer gets no gradient."""
    fast, ref = pair(D=10, hidden=[20, 20])
    x = data(fast)
    with torch.no_grad():
        torch.testing.assert_close(fast.log_prob(x), ref.log_prob(x), **TOL)
    for m in (fast, ref):
        m.layers[0].weight.requires_grad_(False)
        m.output.bias.requires_grad_(False)
    compare(fast, ref, x, fused=True)
    for m in (fast, ref):
        for p in m.parameters():
            p.requires_grad_(False)
    assert fast.log_prob(x).grad_fn is None


@pytest.mark.parametrize("frozen", [[0], [0, 1], [1]])
def test_frozen_leading_layers(frozen):
    """Layers before the first trainable one get no gradient, and the backward stops there."""
    fast, ref = pair(D=10, hidden=[20, 20])
    for m in (fast, ref):
        for i in frozen:
            m.layers[i].requires_grad_(False)
    compare(fast, ref, data(fast), fused=True)


def test_the_backward_keeps_the_forwards_mask():
    """next_mask() between forward and backward: the gradients are those of the forward's mask."""
    fast, ref = pair(D=10, hidden=[24, 24], num_masks=3)
    x = data(fast)
    lp_fast, lp_ref = fast.log_prob(x), ref.log_prob(x)
    assert "_MaskedChainBackward" in nodes(lp_fast)
    fast.next_mask()
    ref.next_mask()
    lp_fast.sum().backward()
    lp_ref.sum().backward()
    for p, q in zip(fast.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL)


@pytest.mark.parametrize("where", ["weight", "hidden weight", "bias", "grad"])
def test_nan_and_inf_give_the_references_numbers_and_say_so(where):
    fast, ref = pair(D=8, hidden=[16, 16])
    x = data(fast)
    masked_out = (fast.output.mask() == 0).nonzero()[0].tolist()  # NaN * 0 is NaN in the reference's W * M
    with torch.no_grad():
        for m in (fast, ref):
            if where == "weight":
                m.output.weight[tuple(masked_out)] = float("nan")
            elif where == "hidden weight":
                m.layers[1].weight[0, 5] = float("inf")
            elif where == "bias":
                m.layers[0].bias[2] = float("nan")
    lp_fast, lp_ref = fast.log_prob(x), ref.log_prob(x)
    assert "_MaskedChainBackward" in nodes(lp_fast)
    torch.testing.assert_close(lp_fast, lp_ref, equal_nan=True, **TOL)
    g = torch.ones(x.shape[0])
    if where == "grad":
        g[2] = float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lp_fast.backward(g)
    lp_ref.backward(g)
    assert any("reference" in str(w.message) for w in caught), [str(w.message) for w in caught]
    for p, q in zip(fast.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, equal_nan=True, **TOL)


def test_gradients_of_gradients_refuse_as_the_chained_path_does():
    fast, ref = pair(D=8, hidden=[16])
    x = data(fast)
    params = list(fast.parameters())
    grads = torch.autograd.grad(fast.log_prob(x).sum(), params, create_graph=True)
    want = torch.autograd.grad(ref.log_prob(x).sum(), list(ref.parameters()))
    for a, b in zip(grads, want):
        torch.testing.assert_close(a.detach(), b, **TOL)
    with pytest.raises(NotImplementedError, match="second-order gradients"):
        torch.autograd.grad(sum(g.square().sum() for g in grads), params)


def test_batched_gradients():
    fast, ref = pair(D=8, hidden=[16])
    x = data(fast, B=4)
    got = torch.autograd.grad(fast.log_prob(x), list(fast.parameters()), torch.eye(4), is_grads_batched=True)
    want = torch.autograd.grad(ref.log_prob(x), list(ref.parameters()), torch.eye(4), is_grads_batched=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)


def test_a_weight_changed_before_the_backward_is_an_error():
    fast, _ = pair(D=8, hidden=[16])
    lp = fast.log_prob(data(fast))
    with torch.no_grad():
        fast.layers[0].weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        lp.sum().backward()


def test_training_steps_match_the_reference():
    """A few Adam steps (fused) through both: the same parameters after each."""
    fast, ref = pair(D=14, hidden=[32, 32])
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2, fused=True) for m in (fast, ref)]
    for step in range(4):
        x = data(fast, B=16, seed=step)
        for m, opt in zip((fast, ref), opts):
            opt.zero_grad(set_to_none=True)
            (-m.log_prob(x).mean()).backward()
            opt.step()
        for p, q in zip(fast.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_a_training_forward_marks_the_evaluation_cache():
    """As the chained path: the next evaluation rebuilds (a fused optimizer step may follow unseen)."""
    from armodel_fast.ops.masked_linear import cache
    fast, _ = pair(D=10, hidden=[20])
    x = data(fast)
    with torch.no_grad():
        fast.log_prob(x)  # evaluation: prepared weights cached
    weights = [m.weight for m in (fast.layers[0], fast.output)]
    entries = [e for (i, _), e in cache._CACHE.items() if i in {id(w) for w in weights}]
    assert len(entries) >= 2 and not any(e.training for e in entries)
    lp = fast.log_prob(x)
    assert "_MaskedChainBackward" in nodes(lp)
    assert all(e.training for e in entries)
    with torch.no_grad():  # an evaluation between forward and backward rebuilds the entries ...
        fast.log_prob(x)
    entries = [e for (i, _), e in cache._CACHE.items() if i in {id(w) for w in weights}]
    assert not any(e.training for e in entries)
    lp.sum().backward()  # ... and the backward marks them again, as the per-layer path's does
    assert all(e.training for e in entries)
