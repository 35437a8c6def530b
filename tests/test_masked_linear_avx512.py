"""The masked layer's AVX-512 training kernels (csrc/masked_linear/masked_linear_avx512_cpu.cpp).

With degree-sorted layers in fp32 on a CPU with AVX-512, the C++ training path runs register
tiles over the staircase instead of a BLAS call per block; ``ARMODEL_FAST_ISA=avx2`` (or a CPU
without AVX-512) keeps the BLAS kernels. Both must give the reference's values and gradients,
grad W exactly zero outside the mask, on every tile edge (batch, units and inputs that are not
multiples of the 12 x 32 tiles, rows that reach no input or every input).
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import armodel_fast as af
from armodel_fast import _ext
from armodel_fast.ops.masked_linear import launchers, masked_linear
from armodel_fast.reference.masked_linear import degree_mask
from made_cases import CountingExt

EXT = _ext.get_ext()
pytestmark = pytest.mark.skipif(EXT is None or not hasattr(EXT, "masked_linear_train_kernels"),
                                reason=f"no cpp masked_linear training path here:\n{af.explain('masked_linear')}")
ACT = {"none": lambda t: t, "relu": F.relu, "elu": F.elu, "tanh": torch.tanh}


def cpu_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return all(f in flags for f in ("avx512f", "avx512vl", "avx512dq", "avx512bw"))


def test_the_kernels_in_use_follow_the_cpu_and_the_isa_setting():
    want = "avx512" if cpu_has_avx512() and os.environ.get("ARMODEL_FAST_ISA", "avx512") == "avx512" else "blas"
    assert EXT.masked_linear_train_kernels() == want
    assert launchers._avx512_runs(torch.zeros(1)) == (want == "avx512")
    assert not launchers._avx512_runs(torch.zeros(1, dtype=torch.float64))  # fp32 only


ORDERS = ("sorted", "in", "out", "both")  # which degree vectors are out of order (a random order's layers)


def check(B, n_in, n_out, D, strict, act, bias, seed, x_view=False, w_view=False, order="sorted"):
    """The cpp training path against the reference in float64, on sorted degrees or, ``order``,
    with the input degrees, the output degrees or both shuffled (the kernels read through the sorts)."""
    g = torch.Generator().manual_seed(seed)
    din = torch.randint(0, D + 2, (n_in,), generator=g).sort().values  # rows may reach nothing or all
    dout = torch.randint(0, D + 2, (n_out,), generator=g).sort().values
    if order in ("in", "both"):
        din = din[torch.randperm(n_in, generator=g)]
    if order in ("out", "both"):
        dout = dout[torch.randperm(n_out, generator=g)]
    w_full = torch.randn(n_out, n_in + (5 if w_view else 0), generator=g)
    w = w_full[:, :n_in].detach().requires_grad_() if w_view else w_full.requires_grad_()
    x_full = torch.randn(n_in, B, generator=g)
    x = (x_full.t() if x_view else x_full.t().contiguous()).requires_grad_()
    b = torch.randn(n_out, generator=g).requires_grad_() if bias else None
    gy = torch.randn(B, n_out, generator=g)
    y = masked_linear(x, w, b, din, dout, strict, act, backend="cpp")
    y.backward(gy)
    mask = degree_mask(din, dout, strict, torch.float64)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if bias else None
    y64 = ACT[act](F.linear(x64, w64 * mask, b64))
    y64.backward(gy.double())
    tol = {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(y.double(), y64, **tol)
    torch.testing.assert_close(x.grad.double(), x64.grad, **tol)
    torch.testing.assert_close(w.grad.double(), w64.grad, **tol)
    if bias:
        torch.testing.assert_close(b.grad.double(), b64.grad, **tol)
    assert bool((w.grad[mask == 0] == 0).all()), "grad W must be exactly zero outside the mask"
    reached = (mask != 0).any(0)
    assert bool((x.grad[:, ~reached] == 0).all()), "inputs no unit reaches get exactly zero gradient"


@pytest.mark.parametrize("B, n_in, n_out", [(1, 1, 1), (12, 32, 12), (13, 33, 13), (33, 31, 25), (100, 70, 50),
                                            (128, 64, 40), (7, 200, 3)])
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("act", ["none", "relu", "elu", "tanh"])
@pytest.mark.parametrize("order", ORDERS)
def test_tile_edges_match_reference(B, n_in, n_out, strict, act, order):
    check(B, n_in, n_out, D=min(n_in, 20), strict=strict, act=act, bias=act != "none", seed=B * 1000 + n_in,
          order=order)


@settings(max_examples=60, deadline=None)
@given(B=st.integers(1, 70), n_in=st.integers(1, 90), n_out=st.integers(1, 60), D=st.integers(1, 40),
       strict=st.booleans(), act=st.sampled_from(sorted(ACT)), bias=st.booleans(), seed=st.integers(0, 2**16),
       x_view=st.booleans(), w_view=st.booleans(), order=st.sampled_from(ORDERS))
def test_random_layers_match_reference(B, n_in, n_out, D, strict, act, bias, seed, x_view, w_view, order):
    check(B, n_in, n_out, D, strict, act, bias, seed, x_view, w_view, order)


@pytest.mark.parametrize("order", ORDERS)
def test_large_batch_and_threads_match_reference(order):
    threads = torch.get_num_threads()
    try:
        for nt in (1, 3):
            torch.set_num_threads(nt)
            check(1100, 40, 30, 20, False, "relu", True, seed=nt, order=order)
    finally:
        torch.set_num_threads(threads)


def test_blas_kernels_when_the_isa_is_lowered():
    """ARMODEL_FAST_ISA=avx2: the BLAS-per-block kernels run, with the same results."""
    code = ("import torch, sys\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "import test_masked_linear_avx512 as t\n"
            "assert t.EXT.masked_linear_train_kernels() == 'blas'\n"
            "t.check(33, 70, 50, 20, False, 'tanh', True, seed=3)\n"
            "t.check(12, 31, 13, 10, True, 'none', False, seed=4, x_view=True, w_view=True)\n")
    env = {**os.environ, "ARMODEL_FAST_ISA": "avx2"}
    done = subprocess.run([sys.executable, "-c", code, os.path.dirname(__file__)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("B, n_in, n_out", [(0, 5, 4), (3, 0, 4), (3, 5, 0), (0, 0, 0)])
def test_empty_shapes_match_reference(B, n_in, n_out):
    x = torch.randn(B, n_in, requires_grad=True)
    w = torch.randn(n_out, n_in, requires_grad=True)
    b = torch.randn(n_out, requires_grad=True)
    y = masked_linear(x, w, b, torch.arange(n_in), torch.arange(n_out), False, "relu", backend="cpp")
    y.sum().backward()
    mask = degree_mask(torch.arange(n_in), torch.arange(n_out), False, torch.float32)
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y2 = F.relu(F.linear(x2, w2 * mask, b2))
    y2.sum().backward()
    torch.testing.assert_close(y, y2)
    for got, want in ((x.grad, x2.grad), (w.grad, w2.grad), (b.grad, b2.grad)):
        torch.testing.assert_close(got, want if want is not None else torch.zeros_like(got))


def test_large_batches_keep_the_blocked_sums_accurate():
    """Grad W sums over the batch in chunks (as BLAS does): at B=5000 it stays within tolerance."""
    for seed in range(3):
        check(5000, 40, 30, 20, False, "none", True, seed=seed)


@pytest.mark.parametrize("order", ORDERS)
def test_grad_weight_by_unit_tiles_matches_reference(order):
    """Where g does not fit L2 (B * units * 4 > 512 KiB) grad W goes by tiles of units."""
    check(300, 60, 500, 40, False, "relu", True, seed=1, order=order)
    check(290, 33, 470, 25, True, "tanh", False, seed=2, x_view=True, w_view=True, order=order)


def test_strided_bias_and_upstream_gradient_match_reference():
    g = torch.Generator().manual_seed(7)
    din, dout = torch.arange(40), torch.randint(0, 42, (30,), generator=g).sort().values
    x = torch.randn(20, 40, generator=g, requires_grad=True)
    w = torch.randn(30, 40, generator=g, requires_grad=True)
    b_full = torch.randn(60, generator=g)
    b = b_full[::2].detach().requires_grad_()  # non-contiguous leaf
    gy = torch.randn(30, 20, generator=g).t()  # non-contiguous upstream gradient
    masked_linear(x, w, b, din, dout, False, "elu", backend="cpp").backward(gy)
    mask = degree_mask(din, dout, False, torch.float32)
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
    F.elu(F.linear(x2, w2 * mask, b2)).backward(gy)
    for got, want in ((x.grad, x2.grad), (w.grad, w2.grad), (b.grad, b2.grad)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("act", ["relu", "elu", "tanh"])
@pytest.mark.parametrize("shuffled", [False, True])
def test_nonfinite_values_match_reference(act, shuffled):
    """NaN/inf in x, in a masked-out or a connected weight, in the bias or upstream gradient: the
    reference's NaN pattern, and the backward says it ran the reference's (DESIGN.md section 9);
    on sorted degrees and on shuffled ones."""
    g = torch.Generator().manual_seed(8)
    din, dout = torch.arange(1, 33), torch.randint(0, 34, (24,), generator=g).sort().values
    if shuffled:
        din, dout = din[torch.randperm(32, generator=g)], dout[torch.randperm(24, generator=g)]
    mask = degree_mask(din, dout, False, torch.float32)
    for where in ("x", "w_masked", "w_connected", "bias", "grad"):
        x = torch.randn(13, 32, generator=g)
        w = torch.randn(24, 32, generator=g)
        b = torch.randn(24, generator=g)
        gy = torch.randn(13, 24, generator=g)
        if where == "x":
            x[3, 30] = float("nan")
        elif where == "w_masked":
            w[tuple((mask == 0).nonzero()[0].tolist())] = float("inf")  # one entry (a list would pick rows)
        elif where == "w_connected":  # NaN pre-activations: the reference's NaN * 0 reach masked-out gradients
            w[tuple(mask.nonzero()[0].tolist())] = float("nan")
        elif where == "bias":
            b[5] = float("nan")
        else:
            gy[2, 7] = float("nan")
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        ref = [t.clone().requires_grad_() for t in (x, w, b)]
        before = sum(af.dispatch.reference_backwards().values())
        with pytest.warns(RuntimeWarning):  # the kernels hand NaN/inf backwards to the reference
            y = masked_linear(*leaves[:2], leaves[2], din, dout, False, act, backend="cpp")
            y.backward(gy)
        assert sum(af.dispatch.reference_backwards().values()) == before + 1, where
        y_ref = ACT[act](F.linear(ref[0], ref[1] * mask, ref[2]))
        y_ref.backward(gy)
        torch.testing.assert_close(y, y_ref, equal_nan=True)
        for got, want in zip(leaves, ref):
            torch.testing.assert_close(got.grad, want.grad, equal_nan=True, rtol=1e-4, atol=1e-5)


def _big_layer(seed):
    """A sorted layer whose grad W (512 x 512 fp32, 1 MiB) is large enough for the kept blocks."""
    g = torch.Generator().manual_seed(seed)
    din, dout = torch.arange(512), torch.randint(0, 520, (512,), generator=g).sort().values
    w = torch.randn(512, 512, generator=g).requires_grad_()
    return w, din, dout, degree_mask(din, dout, False, torch.float32)


LOOSE = {"rtol": 1e-3, "atol": 1e-3}  # sums of 8 x 512 squares' gradients; aliasing would be off by O(1)


def test_reused_grad_weight_blocks_never_alias_live_gradients():
    """grad W's block is written again only when nothing references it: gradients that are kept
    (accumulated in .grad, returned by autograd.grad and held) stay as they were."""
    w, din, dout, mask = _big_layer(0)
    xs = [torch.randn(8, 512, generator=torch.Generator().manual_seed(i)) for i in range(4)]

    def grad_of(x):  # the reference's gradient
        w2 = w.detach().clone().requires_grad_()
        F.linear(x, w2 * mask).square().sum().backward()
        return w2.grad

    # accumulation without zeroing: .grad keeps the sum
    for x in xs[:3]:
        masked_linear(x, w, None, din, dout, False, backend="cpp").square().sum().backward()
    torch.testing.assert_close(w.grad, sum(grad_of(x) for x in xs[:3]), **LOOSE)
    # set_to_none between steps (blocks reused): each step's gradient is its own
    for x in xs:
        w.grad = None
        masked_linear(x, w, None, din, dout, False, backend="cpp").square().sum().backward()
        torch.testing.assert_close(w.grad, grad_of(x), **LOOSE)
    # gradients held by the caller are not overwritten by later calls
    held = [torch.autograd.grad(masked_linear(x, w, None, din, dout, False, backend="cpp").square().sum(), w)[0]
            for x in xs]
    for x, got in zip(xs, held):
        torch.testing.assert_close(got, grad_of(x), **LOOSE)
    assert len({t.data_ptr() for t in held}) == len(held)


def test_clear_cache_releases_the_kept_blocks_but_not_held_gradients():
    w, din, dout, mask = _big_layer(1)
    x = torch.randn(8, 512)
    masked_linear(x, w, None, din, dout, False, backend="cpp").sum().backward()
    held = w.grad.clone()
    af.clear_cache()  # w.grad still holds its block: nothing to free, and its values stay
    assert EXT.masked_linear_release_buffers() == 0
    torch.testing.assert_close(w.grad, held)
    w.grad = None
    masked_linear(x, w, None, din, dout, False, backend="cpp").sum().backward()
    w.grad = None  # dropped: the block is only kept now
    if EXT.masked_linear_train_kernels() == "avx512":
        assert EXT.masked_linear_release_buffers() >= 512 * 512 * 4
    assert EXT.masked_linear_release_buffers() == 0


# ---- the one-call training entries (csrc/masked_linear/masked_linear_train_cpu.cpp) ------------------------

needs_one_call = pytest.mark.skipif(EXT is None or not launchers._avx512_runs(torch.zeros(1))
                                    or af.dispatch.optional_launcher("masked_linear", "train_forward", "cpp") is None,
                                    reason="the one-call training path runs with the AVX-512 kernels only")


@needs_one_call
@pytest.mark.parametrize("act", sorted(ACT))
def test_a_sorted_training_call_is_one_extension_call_each_way(monkeypatch, act):
    counting = CountingExt(EXT, ("masked_linear_train_forward", "masked_linear_train_backward"))
    monkeypatch.setattr(launchers, "_cpp", lambda: counting)
    check(45, 70, 50, 20, False, act, act != "tanh", seed=11)
    assert counting.calls == {"masked_linear_train_forward": 1, "masked_linear_train_backward": 1}


@needs_one_call
def test_made_training_steps_take_the_one_call_path(monkeypatch):
    counting = CountingExt(EXT, ("masked_linear_train_forward", "masked_linear_train_backward"))
    monkeypatch.setattr(launchers, "_cpp", lambda: counting)
    model = af.MADE(12, [20, 20], order=torch.arange(12), backend="cpp")
    x = torch.bernoulli(torch.full((9, 12), 0.5))
    (-model.log_prob(x).mean()).backward()
    assert counting.calls == {"masked_linear_train_forward": 3, "masked_linear_train_backward": 3}


def _layer(seed=0):
    g = torch.Generator().manual_seed(seed)
    din, dout = torch.arange(1, 33), torch.randint(0, 34, (24,), generator=g).sort().values
    reach = launchers.plan(din, dout, False).row_reach
    return torch.randn(6, 32, generator=g), torch.randn(24, 32, generator=g), reach, degree_mask(din, dout, False,
                                                                                                 torch.float32)


@needs_one_call
def test_one_call_forward_refuses_nonfinite_inputs_and_weights():
    x, w, reach, mask = _layer()
    y, ok = EXT.masked_linear_train_forward(x, w, None, reach, 0)
    assert ok
    torch.testing.assert_close(y, x @ (w * mask).t(), rtol=1e-5, atol=1e-5)
    bad_x = x.clone()
    bad_x[2, 31] = float("nan")
    assert EXT.masked_linear_train_forward(bad_x, w, None, reach, 0) == (None, False)
    i, j = (mask == 0).nonzero()[-1].tolist()  # a masked-out weight
    bad_w = w.clone()
    bad_w[i, j] = float("-inf")
    assert EXT.masked_linear_train_forward(x, bad_w, None, reach, 0) == (None, False)
    i, j = mask.nonzero()[0].tolist()  # a connected one too: every parameter is checked (section 9)
    live_w = w.clone()
    live_w[i, j] = float("inf")
    assert EXT.masked_linear_train_forward(x, live_w, None, reach, 0) == (None, False)
    # a weight that is a column slice: NaN in the parent's other columns is not the layer's
    parent = torch.cat([w, torch.full((24, 3), float("nan"))], 1)
    y, ok = EXT.masked_linear_train_forward(x, parent[:, :32], None, reach, 0)
    assert ok
    torch.testing.assert_close(y, x @ (w * mask).t(), rtol=1e-5, atol=1e-5)


@needs_one_call
def test_one_call_backward_refuses_nonfinite_gradients_and_bias_and_checks_inputs_when_asked():
    x, w, reach, mask = _layer(1)
    b, gy = torch.randn(24), torch.randn(6, 24)
    dx, dw, db, ok = EXT.masked_linear_train_backward(gy, x, None, w, b, reach, 0, True, True, True, True)
    assert ok
    torch.testing.assert_close(dx, gy @ (w * mask), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dw, (gy.t() @ x) * mask, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(db, gy.sum(0))
    for name, bad in (("grad_y", gy), ("bias", b)):
        bad = bad.clone()
        bad.view(-1)[3] = float("nan")
        args = (bad, b) if name == "grad_y" else (gy, bad)
        assert EXT.masked_linear_train_backward(args[0], x, None, w, args[1], reach, 0, True, True, True, False)[3] \
            is False, name
    bad_x = x.clone()
    bad_x[0, 0] = float("inf")
    assert EXT.masked_linear_train_backward(gy, bad_x, None, w, b, reach, 0, True, True, True, True)[3] is False
    assert EXT.masked_linear_train_backward(gy, bad_x, None, w, b, reach, 0, True, True, True, False)[3] is True
    i, j = mask.nonzero()[0].tolist()  # a connected weight: checked with the inputs (every parameter)
    live_w = w.clone()
    live_w[i, j] = float("nan")
    assert EXT.masked_linear_train_backward(gy, x, None, live_w, b, reach, 0, True, True, True, True)[3] is False
    assert EXT.masked_linear_train_backward(gy, x, None, live_w, b, reach, 0, True, True, True, False)[3] is True
    # the gradient of .sum(): one value broadcast, checked without materialising it
    ones = torch.ones(()).expand(6, 24)
    assert EXT.masked_linear_train_backward(ones, x, None, w, None, reach, 0, True, True, False, False)[3] is True
    nan = torch.full((), float("nan")).expand(6, 24)
    assert EXT.masked_linear_train_backward(nan, x, None, w, None, reach, 0, True, True, False, False)[3] is False


@needs_one_call
def test_one_call_entries_refuse_a_reach_that_is_no_staircase_within_the_inputs():
    x, w, reach, _ = _layer(2)
    for bad in (reach.flip(0), reach + 33, reach - 40):
        if bool((bad == reach).all()):
            continue
        with pytest.raises(ValueError, match="row_reach"):
            EXT.masked_linear_train_forward(x, w, None, bad.contiguous(), 0)
        with pytest.raises(ValueError, match="row_reach"):
            EXT.masked_linear_train_backward(torch.ones(6, 24), x, None, w, None, bad.contiguous(), 0, True, True,
                                             False, False)
        ip = launchers.plan(torch.arange(1, 33), torch.arange(24), False)  # the older in-place entry too
        with pytest.raises(ValueError, match="row_reach"):
            EXT.masked_linear_forward(x, w, None, ip.perm_in, ip.perm_out, bad.contiguous(), ip.blocks, 0, True, True,
                                      slabs=None, in_place=True)
    with pytest.raises(ValueError, match="y must have shape"):
        EXT.masked_linear_train_backward(torch.ones(6, 24), x, torch.ones(6, 23), w, None, reach, 1, True, True,
                                         False, False)
