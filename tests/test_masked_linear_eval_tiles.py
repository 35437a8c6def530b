"""Evaluation calls (no graph) of the cpp masked layer on the AVX-512 register tiles.

With degrees already in order, in fp32 on a CPU where the AVX-512 kernels run, an evaluation
call of at least ``launchers.EVAL_MIN_ROWS`` rows runs the training path's one-call forward
(``masked_linear_train_forward``) on the weights as stored, instead of the prepared
(degree-sorted, cached) weights; fewer rows, unsorted degrees and other dtypes keep the
cached path. Both give the reference's values and NaNs (docs/DESIGN.md sections 4 and 9);
hypothesis draws layers and natural-order MADEs of every shape at 16+ rows.
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import armodel_fast as af
from armodel_fast import _ext
from armodel_fast.ops.masked_linear import clear_cache, launchers, masked_linear
from armodel_fast.reference.masked_linear import degree_mask
from made_cases import CountingExt

EXT = _ext.get_ext()
pytestmark = pytest.mark.skipif(
    EXT is None or not hasattr(EXT, "masked_linear_train_kernels") or not launchers._avx512_runs(torch.zeros(1)),
    reason="the evaluation tiles run with the AVX-512 kernels only (fp32 on a CPU with AVX-512)")
ACT = {"none": lambda t: t, "relu": F.relu, "elu": F.elu, "tanh": torch.tanh}
MIN = launchers.EVAL_MIN_ROWS
COUNTED = ("masked_linear_train_forward", "masked_linear_prepare")


@pytest.fixture
def counting(monkeypatch):
    clear_cache()
    ext = CountingExt(EXT, COUNTED)
    monkeypatch.setattr(launchers, "_cpp", lambda: ext)
    return ext.calls


def layer(n_in, n_out, D, seed, sort=True):
    g = torch.Generator().manual_seed(seed)
    din = torch.randint(0, D + 2, (n_in,), generator=g)  # rows may reach nothing or everything
    dout = torch.randint(0, D + 2, (n_out,), generator=g)
    if sort:
        din, dout = din.sort().values, dout.sort().values
    return torch.randn(n_out, n_in, generator=g), torch.randn(n_out, generator=g), din, dout


def reference(x, w, b, din, dout, strict, act):
    return ACT[act](F.linear(x.double(), w.double() * degree_mask(din, dout, strict, torch.float64),
                             None if b is None else b.double()))


@pytest.mark.parametrize("B", [MIN, MIN + 1, 45])
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("act", sorted(ACT))
def test_sorted_evaluation_calls_of_enough_rows_run_the_tiles_and_match_the_reference(counting, B, strict, act):
    w, b, din, dout = layer(70, 37, 20, seed=B + 7 * strict)
    x = torch.randn(B, 70)
    with torch.no_grad():
        y = masked_linear(x, w, b if act != "none" else None, din, dout, strict, act, backend="cpp")
    torch.testing.assert_close(y.double(), reference(x, w, b if act != "none" else None, din, dout, strict, act),
                               rtol=1e-4, atol=1e-4)
    assert counting == {"masked_linear_train_forward": 1, "masked_linear_prepare": 0}


def test_fewer_rows_keep_the_cached_path_which_the_tiles_leave_valid(counting):
    w, b, din, dout = layer(64, 48, 30, seed=1)
    small, large = torch.randn(MIN - 1, 64), torch.randn(MIN, 64)
    with torch.no_grad():
        y_small = masked_linear(small, w, b, din, dout, False, "relu", backend="cpp")
        assert counting == {"masked_linear_train_forward": 0, "masked_linear_prepare": 1}
        masked_linear(large, w, b, din, dout, False, "relu", backend="cpp")
        again = masked_linear(small, w, b, din, dout, False, "relu", backend="cpp")
    assert counting == {"masked_linear_train_forward": 1, "masked_linear_prepare": 1}  # (not prepared anew)
    torch.testing.assert_close(again, y_small, rtol=0, atol=0)
    torch.testing.assert_close(y_small.double(), reference(small, w, b, din, dout, False, "relu"), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("case", ["unsorted", "float64", "one row"])
def test_what_the_tiles_do_not_take_runs_the_cached_path(counting, case):
    w, b, din, dout = layer(40, 30, 12, seed=3, sort=case != "unsorted")
    x = torch.randn(MIN + 4, 40)
    if case == "float64":
        w, b, x = w.double(), b.double(), x.double()
    if case == "one row":
        x = x[:1]
    with torch.no_grad():
        y = masked_linear(x, w, b, din, dout, False, "tanh", backend="cpp")
    torch.testing.assert_close(y.double(), reference(x, w, b, din, dout, False, "tanh"), rtol=1e-4, atol=1e-4)
    assert counting == {"masked_linear_train_forward": 0, "masked_linear_prepare": 1}


@pytest.mark.parametrize("where", ["masked-out weight", "connected weight", "input"])
def test_nonfinite_values_give_the_references_nans(where):
    w, b, din, dout = layer(50, 40, 16, seed=5)
    x = torch.randn(MIN + 3, 50)
    mask = degree_mask(din, dout, False, torch.float32)
    if where == "input":
        x[4, int(din.argmax())] = float("inf")  # an input few units reach: NaN only in those
    else:
        i, j = (mask == (0 if where == "masked-out weight" else 1)).nonzero()[0].tolist()
        w[i, j] = float("nan")
    with torch.no_grad():
        y = masked_linear(x, w, b, din, dout, False, "none", backend="cpp")
    expected = F.linear(x.double(), w.double() * mask.double(), b.double())
    assert bool(expected.isnan().any())
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4, equal_nan=True)


def test_a_weight_data_write_of_one_entry_is_seen_at_the_next_call():
    """No prepared copy is read, so even a ``.data`` write that the version counter and the
    cache's sampled entries cannot see changes the next result."""
    w, b, din, dout = layer(64, 48, 30, seed=9)
    x = torch.randn(32, 64)
    mask = degree_mask(din, dout, False, torch.float32)
    i, j = mask.nonzero()[len(mask.nonzero()) // 2].tolist()
    with torch.no_grad():
        masked_linear(x, w, b, din, dout, False, "none", backend="cpp")
        w.data[i, j] += 3.0
        y = masked_linear(x, w, b, din, dout, False, "none", backend="cpp")
    torch.testing.assert_close(y.double(), reference(x, w, b, din, dout, False, "none"), rtol=1e-4, atol=1e-4)


def test_made_evaluation_runs_each_layer_on_the_tiles(counting):
    torch.manual_seed(0)
    fast = af.MADE(12, [20, 20], order=torch.arange(12), backend="cpp")
    ref = af.MADE(12, [20, 20], order=torch.arange(12), backend="reference")
    ref.load_state_dict(fast.state_dict())
    x = torch.bernoulli(torch.full((MIN * 2, 12), 0.5))
    with torch.no_grad():
        got, want = fast.log_prob(x), ref.log_prob(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert counting == {"masked_linear_train_forward": 3, "masked_linear_prepare": 0}


@pytest.mark.parametrize("act", sorted(ACT))
def test_a_graph_for_the_bias_alone_runs_the_tiles_and_gives_the_references_gradient(counting, act):
    """Only the bias trains: nothing is prepared anew (fresh_weights is False), so the forward is the
    evaluation one; its backward is the reference's."""
    w, b, din, dout = layer(60, 45, 25, seed=13)
    x, gy = torch.randn(MIN + 5, 60), torch.randn(MIN + 5, 45)
    b.requires_grad_()
    y = masked_linear(x, w, b, din, dout, True, act, backend="cpp")
    y.backward(gy)
    assert counting == {"masked_linear_train_forward": 1, "masked_linear_prepare": 0}
    b64 = b.detach().double().requires_grad_()
    y64 = reference(x, w, b64, din, dout, True, act)
    y64.backward(gy.double())
    torch.testing.assert_close(y.double(), y64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.grad.double(), b64.grad, rtol=1e-4, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(n_in=st.integers(1, 90), n_out=st.integers(1, 90), D=st.integers(1, 40), B=st.integers(MIN, 70),
       strict=st.booleans(), act=st.sampled_from(sorted(ACT)), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_fuzzed_sorted_layers_in_evaluation_match_the_reference(n_in, n_out, D, B, strict, act, bias, seed):
    w, b, din, dout = layer(n_in, n_out, D, seed)
    x = torch.randn(B, n_in, generator=torch.Generator().manual_seed(seed + 1))
    b = b if bias else None
    with torch.no_grad():
        y = masked_linear(x, w, b, din, dout, strict, act, backend="cpp")
    torch.testing.assert_close(y.double(), reference(x, w, b, din, dout, strict, act), rtol=1e-4, atol=1e-4)


@settings(max_examples=15, deadline=None)
@given(hidden=st.lists(st.integers(1, 40), min_size=1, max_size=3), D=st.integers(2, 30), B=st.integers(MIN, 50),
       act=st.sampled_from(["relu", "tanh", "elu"]), seed=st.integers(0, 2**16))
def test_fuzzed_natural_order_made_in_evaluation_matches_the_reference(hidden, D, B, act, seed):
    torch.manual_seed(seed)
    fast = af.MADE(D, hidden, order=torch.arange(D), activation=act, backend="cpp")
    ref = af.MADE(D, hidden, order=torch.arange(D), activation=act, backend="reference")
    ref.load_state_dict(fast.state_dict())
    x = torch.bernoulli(torch.full((B, D), 0.5))
    with torch.no_grad():
        torch.testing.assert_close(fast.log_prob(x), ref.log_prob(x), rtol=1e-4, atol=1e-4)
