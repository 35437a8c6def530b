"""masked_linear (fast backends) against the reference F.linear(x, W*M): outputs, every gradient,
the prepared-weight cache, gradcheck, input validation."""
import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import armodel_fast as af
from armodel_fast import _ext, dispatch
from armodel_fast.ops import masked_linear as ml_ops
from armodel_fast.ops.masked_linear import masked_linear
from armodel_fast.reference import made as ref_made
from armodel_fast.reference.masked_linear import degree_mask

ACTS = {"none": lambda t: t, "relu": F.relu, "elu": F.elu, "tanh": torch.tanh}
FAST = [b for b in dispatch.BACKENDS[1:] if dispatch._why_not(b, "masked_linear", torch.device("cpu")) is None]
pytestmark = pytest.mark.skipif(not FAST, reason=f"no fast masked_linear backend here:\n{af.explain('masked_linear')}")
backends = pytest.mark.parametrize("backend", FAST)


def reference(x, w, b, din, dout, strict, act):
    return ACTS[act](F.linear(x, w * degree_mask(din, dout, strict, w.dtype), b))


def leaves(*ts):
    return [t.detach().clone().requires_grad_(True) if t is not None else None for t in ts]


def compare(backend, x, w, b, din, dout, strict, act, atol=None, rtol=None):
    """Output and dx, dW, db of the backend against the reference autograd."""
    xf, wf, bf = leaves(x, w, b)
    xr, wr, br = leaves(x, w, b)
    y = masked_linear(xf, wf, bf, din, dout, strict, act, backend=backend)
    yr = reference(xr, wr, br, din, dout, strict, act)
    torch.testing.assert_close(y, yr, atol=atol, rtol=rtol)
    g = torch.randn_like(yr)
    got = torch.autograd.grad(y, [t for t in (xf, wf, bf) if t is not None], g)
    want = torch.autograd.grad(yr, [t for t in (xr, wr, br) if t is not None], g)
    for name, a, e in zip(("dx", "dW", "db"), got, want):
        err = (a - e).abs()
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol,
                                   msg=lambda m: f"{name}: max err {err.max():.3g}, mean {err.mean():.3g}\n{m}")


@backends
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("B, I, O, bias", [(3, 37, 53, True), (17, 100, 1, False), (1, 5, 301, True),
                                           (6, 1, 9, True)])
def test_random_degrees_match_reference(backend, act, strict, B, I, O, bias):
    g = torch.Generator().manual_seed(B * 1000 + I * 10 + O)
    x = torch.randn(B, I, generator=g, dtype=torch.float64)
    w = torch.randn(O, I, generator=g, dtype=torch.float64)
    b = torch.randn(O, generator=g, dtype=torch.float64) if bias else None
    # degrees with ties, units reaching nothing and units reaching everything
    din = torch.randint(1, 12, (I,), generator=g)
    dout = torch.randint(0, 13, (O,), generator=g)
    compare(backend, x, w, b, din, dout, strict, act)


@backends
@pytest.mark.parametrize("strict", [False, True])
def test_made_staircase_fp32(backend, strict):
    """MADE-like degrees, sizes that are not multiples of any block size, many blocks."""
    g = torch.Generator().manual_seed(1)
    D, H = 77, 203
    m0 = ref_made.input_degrees(torch.randperm(D, generator=g))
    (m1,) = ref_made.hidden_degrees(m0, [H], g)
    din, dout = (m1, m0) if strict else (m0, m1)
    I, O = din.numel(), dout.numel()
    x = torch.randn(33, I, generator=g)
    w = torch.randn(O, I, generator=g) / I ** 0.5
    compare(backend, x, w, torch.randn(O, generator=g), din, dout, strict, "relu", atol=2e-5, rtol=1e-4)


@backends
def test_leading_dims_and_module(backend):
    lin = af.MaskedLinear(7, 5, torch.arange(7) % 4, torch.arange(5) % 4, backend=backend)
    ref = af.MaskedLinear(7, 5, torch.arange(7) % 4, torch.arange(5) % 4)
    ref.load_state_dict(lin.state_dict())
    x = torch.randn(2, 3, 7)
    torch.testing.assert_close(lin(x), ref(x))
    assert lin.last_backend == backend and lin(x).shape == (2, 3, 5)
    lin.set_degrees(out_degrees=torch.arange(5))
    ref.set_degrees(out_degrees=torch.arange(5))
    torch.testing.assert_close(lin(x), ref(x))


@backends
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("strict", [False, True])
def test_gradcheck_fp64(backend, act, strict):
    g = torch.Generator().manual_seed(3)
    x, w, b = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in ((3, 6), (5, 6), (5,)))
    din, dout = torch.tensor([1, 3, 2, 1, 4, 2]), torch.tensor([0, 2, 4, 1, 3])
    with ml_ops.caching(False):  # gradcheck perturbs w through .data, unseen by the version counter
        assert torch.autograd.gradcheck(lambda x, w, b: masked_linear(x, w, b, din, dout, strict, act, backend),
                                        (x, w, b))


@backends
def test_cache_follows_weight_and_degree_changes(backend):
    ml_ops.clear_cache()
    lin = af.MaskedLinear(20, 30, torch.randint(1, 6, (20,)), torch.randint(0, 7, (30,)), backend=backend)
    x = torch.randn(4, 20)
    with torch.no_grad():
        lin(x)
        builds = ml_ops.cache_info()["builds"]
        y1 = lin(x)
        assert ml_ops.cache_info()["builds"] == builds  # reused
        lin.weight.mul_(2)  # an optimizer-style in-place update bumps the version counter
        torch.testing.assert_close(lin(x), 2 * y1 - lin.bias)
        lin.set_degrees(out_degrees=torch.zeros(30, dtype=torch.long))  # a mask change
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight * lin.mask(), lin.bias))
    lin.load_state_dict({k: torch.zeros_like(v) if k == "weight" else v for k, v in lin.state_dict().items()})
    torch.testing.assert_close(lin(x), lin.bias.expand(4, 30).detach())
    n = ml_ops.cache_info()["entries"]
    assert n == 2  # the prepared weights and the masked-out non-finite check, both of this one weight
    del lin
    gc.collect()
    assert ml_ops.cache_info()["entries"] == 0  # the entries die with their weight


@backends
def test_cache_compares_the_degree_values_at_every_hit(backend):
    """A hit needs the build's degree values: new tensors of equal values hit; new tensors of
    other values (which may reuse a freed tensor's memory), in-place writes and writes the
    version counter does not see (through a NumPy array sharing the memory) rebuild."""
    ml_ops.clear_cache()
    g = torch.Generator().manual_seed(3)
    w, x = torch.randn(6, 5, generator=g), torch.randn(3, 5, generator=g)
    call = lambda din, dout: masked_linear(x, w, None, din, dout, False, "none", backend)  # noqa: E731
    ref = lambda din, dout: reference(x, w, None, din, dout, False, "none")  # noqa: E731
    with torch.no_grad():
        for _ in range(20):  # fresh degree tensors every call, freed right after
            din, dout = torch.randint(1, 5, (5,), generator=g), torch.randint(0, 6, (6,), generator=g)
            torch.testing.assert_close(call(din, dout), ref(din, dout))
        builds = ml_ops.cache_info()["builds"]
        call(din.clone(), dout.clone())  # equal values in new tensors
        call(din, dout)
        assert ml_ops.cache_info()["builds"] == builds
        din.add_(1)  # written in place: the version counter moves
        torch.testing.assert_close(call(din, dout), ref(din, dout))
        assert ml_ops.cache_info()["builds"] > builds
        shared = torch.from_numpy(np.array([1, 2, 3, 4, 5]))
        call(shared, dout)
        shared.numpy()[:] = 5  # a write the version counter does not see
        torch.testing.assert_close(call(shared, dout), ref(shared, dout))


@backends
@pytest.mark.parametrize("B", [0, 3])
@pytest.mark.parametrize("n_out, n_in", [(0, 5), (6, 0), (0, 0)])
def test_empty_layers_and_batches(backend, B, n_out, n_in):
    """No outputs, no inputs or no rows: the reference's result and gradients (a layer with no
    outputs once killed the process with a division by zero)."""
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(n_out, n_in, generator=g), torch.randn(n_out, generator=g)
    x = torch.randn(B, n_in, generator=g)
    din, dout = torch.randint(1, 4, (n_in,), generator=g), torch.randint(0, 4, (n_out,), generator=g)
    ours = [t.clone().requires_grad_(True) for t in (x, w, b)]
    refs = [t.clone().requires_grad_(True) for t in (x, w, b)]
    y = masked_linear(*ours, din, dout, False, "relu", backend)
    r = reference(*refs, din, dout, False, "relu")
    torch.testing.assert_close(y, r)
    y.sum().backward()
    r.sum().backward()
    for t, tr in zip(ours, refs):
        torch.testing.assert_close(t.grad, tr.grad)


@backends
def test_training_steps_use_fresh_weights(backend):
    torch.manual_seed(0)
    din, dout = torch.randint(1, 5, (12,)), torch.randint(1, 5, (8,))
    w = torch.randn(8, 12, requires_grad=True)
    w_ref = w.detach().clone().requires_grad_(True)
    opt, opt_ref = torch.optim.SGD([w], lr=0.1), torch.optim.SGD([w_ref], lr=0.1)
    x = torch.randn(16, 12)
    for _ in range(3):
        for weight, o, fn in ((w, opt, lambda t: masked_linear(x, t, None, din, dout, False, "tanh", backend)),
                              (w_ref, opt_ref, lambda t: reference(x, t, None, din, dout, False, "tanh"))):
            o.zero_grad()
            fn(weight).square().sum().backward()
            o.step()
    torch.testing.assert_close(w, w_ref)


@backends
def test_frozen_weight_and_no_input_grad(backend):
    din, dout = torch.randint(1, 5, (6,)), torch.randint(1, 5, (4,))
    w, b = torch.randn(4, 6), torch.randn(4, requires_grad=True)
    x = torch.randn(3, 6, requires_grad=True)
    masked_linear(x, w, b, din, dout, True, "elu", backend).sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    reference(xr, w, b.detach(), din, dout, True, "elu").sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(x=torch.randn(2, 4)), ValueError, "x must have shape"),
    (dict(x=torch.randn(2, 5, dtype=torch.float64)), TypeError, "same dtype"),
    (dict(x=torch.ones(2, 5, dtype=torch.long)), TypeError, "x must be a floating"),
    (dict(weight=torch.randn(3, 5).to(torch.float8_e4m3fn)), TypeError, "weight must be a float16, bfloat16"),
    (dict(weight=torch.ones(3, 5, dtype=torch.long)), TypeError, "weight must be a float16, bfloat16"),
    (dict(x=[1.0] * 5), TypeError, "x must be a torch.Tensor"),
    (dict(weight=torch.randn(3, 5, 1)), ValueError, "weight must have shape"),
    (dict(bias=torch.randn(4)), ValueError, "bias must have shape"),
    (dict(bias=torch.randn(3, dtype=torch.float64)), TypeError, "bias must have"),
    (dict(in_degrees=torch.ones(5)), TypeError, "in_degrees must hold integer"),
    (dict(in_degrees=torch.ones(4, dtype=torch.long)), ValueError, "in_degrees must be a 1-D"),
    (dict(out_degrees=torch.ones(3, 1, dtype=torch.long)), ValueError, "out_degrees must be a 1-D"),
    (dict(strict=1), TypeError, "strict must be a bool"),
    (dict(activation="gelu"), ValueError, "activation must be one of"),
    (dict(backend="fortran"), ValueError, "backend"),
])
def test_bad_inputs(kwargs, err, match):
    args = dict(x=torch.randn(2, 5), weight=torch.randn(3, 5), bias=torch.randn(3),
                in_degrees=torch.ones(5, dtype=torch.long), out_degrees=torch.ones(3, dtype=torch.long),
                strict=False, activation="relu", backend=FAST[0])
    args.update(kwargs)
    with pytest.raises(err, match=match):
        masked_linear(**args)


@backends
@pytest.mark.parametrize("shift", [2 ** 40, -2 ** 40])
def test_degrees_beyond_int32_mean_what_they_mean_everywhere(backend, shift):
    """Only how degrees compare matters: shifted far past int32, every backend computes the
    reference's layer (the Triton staircase replaces such degrees by their ranks)."""
    g = torch.Generator().manual_seed(3)
    din, dout = torch.randint(0, 5, (7,), generator=g), torch.randint(0, 5, (6,), generator=g)
    x, w, b = torch.randn(3, 7, generator=g), torch.randn(6, 7, generator=g), torch.randn(6, generator=g)
    for strict in (False, True):
        compare(backend, x, w, b, din + shift, dout + shift, strict, "relu")


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=pytest.mark.skipif(
    _ext.get_ext() is None, reason="needs the C++ extension"))])
def test_degree_writes_that_bypass_the_version_counter_reach_the_mask(backend):
    """Degree tensors rewritten through ``.data`` (no version bump) between training calls: the
    next call uses the new mask, in its output and its gradients (the reference's mask cache
    confirms CPU degree values; the kernels' plans are keyed on them)."""
    g = torch.Generator().manual_seed(3)
    din, dout = torch.arange(1, 9), torch.randint(1, 9, (6,), generator=g).sort().values
    w = torch.randn(6, 8, generator=g, requires_grad=True)
    x = torch.randn(5, 8, generator=g, requires_grad=True)
    r = torch.randn(5, 6, generator=g)
    for step in range(3):
        y = masked_linear(x, w, None, din, dout, False, backend=backend)
        (y * r).sum().backward()
        mask = (dout[:, None] >= din[None, :]).float()
        torch.testing.assert_close(y, x.detach() @ (w.detach() * mask).T)
        torch.testing.assert_close(w.grad, (r.T @ x.detach()) * mask)
        torch.testing.assert_close(x.grad, r @ (w.detach() * mask))
        x.grad = w.grad = None
        new = torch.randint(1, 9, (6,), generator=g)
        dout.data.copy_(new if step == 1 else new.sort().values)  # no version bump; unsorted at step 1
