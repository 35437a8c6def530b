"""Training on unsorted degrees with the AVX-512 kernels (a random order's input and output layers).

The kernels read W, x and g through the stable degree sorts (``launchers.Plan.order_in`` /
``order_out``) and write y, dx and dW in the caller's order: one extension call each way, no
prepared (sorted) copy of W. Values: test_masked_linear_avx512.py's ``check`` with shuffled
degrees; here the path taken, the permutations' checks, calls whose x or y is already in
sorted order, and MADE training steps with a random order against the reference.
"""
import pytest
import torch
import torch.nn.functional as F

import armodel_fast as af
from armodel_fast import _ext
from armodel_fast.ops.masked_linear import launchers
from armodel_fast.ops.masked_linear.functional import masked_linear_call
from armodel_fast.reference.masked_linear import degree_mask
from made_cases import CountingExt
from test_masked_linear_avx512 import ORDERS, check

EXT = _ext.get_ext()
pytestmark = pytest.mark.skipif(EXT is None or not hasattr(EXT, "masked_linear_train_kernels")
                                or EXT.masked_linear_train_kernels() != "avx512",
                                reason="the one-call training path on unsorted degrees runs the AVX-512 kernels only")
COUNTED = ("masked_linear_train_forward", "masked_linear_train_backward", "masked_linear_prepare")


def _layer(n_in=40, n_out=30, D=12, seed=0, shuffle_in=True, shuffle_out=True):
    g = torch.Generator().manual_seed(seed)
    din = torch.randint(0, D, (n_in,), generator=g)
    dout = torch.randint(0, D, (n_out,), generator=g)
    din = din if shuffle_in else din.sort().values
    dout = dout if shuffle_out else dout.sort().values
    w, b = torch.randn(n_out, n_in, generator=g), torch.randn(n_out, generator=g)
    return din, dout, w, b, torch.randn(20, n_in, generator=g)


@pytest.mark.parametrize("order", ORDERS)
def test_a_training_call_is_one_extension_call_each_way_in_any_degree_order(monkeypatch, order):
    counting = CountingExt(EXT, COUNTED)
    monkeypatch.setattr(launchers, "_cpp", lambda: counting)
    check(45, 70, 50, 20, False, "relu", True, seed=11, order=order)
    assert counting.calls == {"masked_linear_train_forward": 1, "masked_linear_train_backward": 1,
                              "masked_linear_prepare": 0}


def test_the_plan_carries_the_sorts_only_where_they_are_not_the_identity():
    din, dout = torch.tensor([3, 1, 2, 2]), torch.tensor([0, 1, 1, 4, 4])
    p = launchers.plan(din, dout, False)
    assert torch.equal(p.order_in, torch.sort(din, stable=True).indices) and p.order_out is None
    assert not p.identity and launchers.plan(din.sort().values, dout, False).order_in is None


def test_the_entries_check_the_permutations_before_any_product():
    din, dout, w, b, x = _layer()
    p = launchers.plan(din, dout, False)
    ok = EXT.masked_linear_train_forward(x, w, b, p.row_reach, 0, p.order_in, p.order_out)
    assert ok[1]
    bad = {"a repeated index": p.order_in.clone().index_fill_(0, torch.tensor([0]), int(p.order_in[1])),
           "an index out of range": p.order_in.clone().index_fill_(0, torch.tensor([0]), 40),
           "a negative index": p.order_in.clone().index_fill_(0, torch.tensor([0]), -1),
           "the wrong length": p.order_in[:-1].contiguous(),
           "int32": p.order_in.int(),
           "a strided view": torch.stack([p.order_in, p.order_in], 1)[:, 0]}  # (a permutation, not contiguous)
    for what, perm in bad.items():
        with pytest.raises(ValueError, match="perm_in"):
            EXT.masked_linear_train_forward(x, w, b, p.row_reach, 0, perm, p.order_out)
        with pytest.raises(ValueError, match="perm_in"):
            EXT.masked_linear_train_backward(torch.ones(20, 30), x, None, w, b, p.row_reach, 0, True, True, True,
                                             False, perm, p.order_out)
    with pytest.raises(ValueError, match="perm_out"):
        EXT.masked_linear_train_forward(x, w, b, p.row_reach, 0, p.order_in, torch.zeros(30, dtype=torch.long))


@pytest.mark.parametrize("x_sorted, y_sorted", [(True, False), (False, True), (True, True)])
def test_calls_with_x_or_y_already_in_sorted_order_keep_the_general_path(monkeypatch, x_sorted, y_sorted):
    """Between chained MADE layers x (or y) may already be in the degree sort's order: the one-call
    kernels read and write the caller's order, so such a call on a non-identity sort takes the
    general path, with the right values."""
    din, dout, w, b, x = _layer(seed=3)
    perm_in, perm_out = torch.sort(din, stable=True).indices, torch.sort(dout, stable=True).indices
    assert launchers._train_plan(x, w, din, dout, False, x_sorted, y_sorted) is None
    counting = CountingExt(EXT, COUNTED)
    monkeypatch.setattr(launchers, "_cpp", lambda: counting)
    leaves = [t.clone().requires_grad_() for t in (x[:, perm_in] if x_sorted else x, w, b)]
    y = masked_linear_call(*leaves, din, dout, False, "tanh", "cpp", x_sorted, y_sorted, True)
    gy = torch.randn(y.shape)
    y.backward(gy)
    assert counting.calls["masked_linear_train_forward"] == counting.calls["masked_linear_train_backward"] == 0
    ref = [t.clone().requires_grad_() for t in (x, w, b)]
    y_ref = torch.tanh(F.linear(ref[0], ref[1] * degree_mask(din, dout, False, torch.float32), ref[2]))
    y_ref.backward(gy[:, torch.argsort(perm_out)] if y_sorted else gy)
    torch.testing.assert_close(y, y_ref[:, perm_out] if y_sorted else y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(leaves[0].grad, ref[0].grad[:, perm_in] if x_sorted else ref[0].grad,
                               rtol=1e-4, atol=1e-5)
    for got, want in zip(leaves[1:], ref[1:]):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5)


def test_evaluation_on_unsorted_degrees_keeps_the_cached_sorted_weights(monkeypatch):
    din, dout, w, b, x = _layer(seed=5)
    counting = CountingExt(EXT, COUNTED)
    monkeypatch.setattr(launchers, "_cpp", lambda: counting)
    af.clear_cache()
    with torch.no_grad():
        y = af.ops.masked_linear.masked_linear(x, w, b, din, dout, False, backend="cpp")
    assert counting.calls == {"masked_linear_train_forward": 0, "masked_linear_train_backward": 0,
                              "masked_linear_prepare": 1}
    torch.testing.assert_close(y, F.linear(x, w * degree_mask(din, dout, False, torch.float32), b))


@pytest.mark.parametrize("hidden", [[24], [30, 30]])
def test_random_order_made_training_steps_match_the_reference(monkeypatch, hidden):
    """A random-order MADE (input and output layers unsorted): one extension call per layer and
    direction, and five Adam steps that track the reference's parameters."""
    fast = af.MADE(14, hidden, order="random", seed=2, backend="cpp")
    ref = af.MADE(14, hidden, order="random", seed=2, backend="reference")
    ref.load_state_dict(fast.state_dict())
    assert not torch.equal(fast.layers[0].in_degrees, fast.layers[0].in_degrees.sort().values)
    counting = CountingExt(EXT, COUNTED)
    monkeypatch.setattr(launchers, "_cpp", lambda: counting)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (fast, ref)]
    g = torch.Generator().manual_seed(0)
    for step in range(5):
        x = torch.bernoulli(torch.full((33, 14), 0.5), generator=g)
        for model, opt in zip((fast, ref), opts):
            opt.zero_grad()
            (-model.log_prob(x).mean()).backward()
            opt.step()
        for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=f"step {step}: {name}")
    layers = len(hidden) + 1
    assert counting.calls == {"masked_linear_train_forward": 5 * layers, "masked_linear_train_backward": 5 * layers,
                              "masked_linear_prepare": 0}


def _old_forward(*args):
    """An older build's entry, without the degree sorts."""
    assert len(args) == 5, len(args)
    return EXT.masked_linear_train_forward(*args)


def _old_backward(*args):
    """An older build's entry, without the degree sorts."""
    assert len(args) == 11, len(args)
    return EXT.masked_linear_train_backward(*args)


class _OlderBuild:
    """The extension as built before the entries took the degree sorts."""
    masked_linear_train_forward = staticmethod(_old_forward)
    masked_linear_train_backward = staticmethod(_old_backward)

    def __getattr__(self, name):
        return getattr(EXT, name)


def test_an_older_build_keeps_unsorted_layers_on_the_general_path(monkeypatch):
    """An in-place build from before this change has the one-call entries without perm_in /
    perm_out: sorted layers still take them (no extra arguments), unsorted ones the general
    path, and auto's rule for unsorted degrees stays at the gathered path's threshold."""
    old = _OlderBuild()
    monkeypatch.setattr(_ext, "get_ext", lambda: old)
    monkeypatch.setattr(launchers, "_cpp", lambda: old)
    launchers.tiles_take_unsorted.cache_clear()
    try:
        assert not launchers.tiles_take_unsorted() and not af.dispatch._tiles_train_unsorted(torch.float32)
        for order in ORDERS:
            check(30, 40, 20, 10, False, "relu", True, seed=1, order=order)
    finally:
        monkeypatch.undo()
        launchers.tiles_take_unsorted.cache_clear()  # (not to keep the older build's answer)
    assert launchers.tiles_take_unsorted()
