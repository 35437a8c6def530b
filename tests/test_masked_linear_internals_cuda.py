"""The CUDA masked_linear tile code (csrc/masked_linear/masked_linear_math.h + masked_linear_glue.h), run on the CPU by
the tile-reference, against F.linear(x, W*M, b): y, dx, dW, db; and the real CUDA backend on a GPU.

The CUDA kernels and the tile-reference make every mask decision through the same header code (k range
of an output tile, zero / all-one / mixed tile kinds, the per-element compare on load, the epilogue with
bias and activation, the dW mask) and share the torch glue, so these CPU tests check the GPU's math
(docs/DESIGN.md section 5). Sizes are not multiples of the 64 x 64 x 16 tile.
"""
import pytest
import torch
import torch.nn.functional as F

from armodel_fast import _ext, dispatch
from armodel_fast.ops import masked_linear as ml_ops
from armodel_fast.ops.masked_linear import launchers as ml_launchers
from armodel_fast.reference import made as ref_made
from armodel_fast.reference.masked_linear import degree_mask

C = _ext.get_ext()
needs_tileref = pytest.mark.skipif(C is None or not hasattr(C, "masked_linear_tileref_forward"),
                                reason=f"C++ extension without the masked_linear tile-reference: {_ext.ext_error()}")

CODES = ml_ops.ACTIVATIONS
ACTS = {"none": lambda t: t, "relu": F.relu, "elu": F.elu, "tanh": torch.tanh}
TILE_M, TILE_N, TILE_K = 64, 64, 16  # csrc/masked_linear/masked_linear_math.h


def reference(x, w, b, din, dout, strict, act):
    return ACTS[act](F.linear(x, w * degree_mask(din, dout, strict, w.dtype), b))


def tileref(x, w, b, din, dout, strict, act, x_sorted=False, y_sorted=False):
    p = ml_ops.prepare_sorted(w, din, dout)
    return C.masked_linear_tileref_forward(x, p.w_sorted, b, p.perm_in, p.perm_out, p.in_sorted, p.out_sorted,
                                           strict, CODES[act], x_sorted, y_sorted)


def tileref_backward(gy, x, w, y, din, dout, strict, act, x_sorted=False, y_sorted=False, need=(True, True, True)):
    p = ml_ops.prepare_sorted(w, din, dout)
    return C.masked_linear_tileref_backward(gy, x, y, p.w_sorted, p.perm_in, p.perm_out, p.in_sorted,
                                            p.out_sorted, strict, CODES[act], x_sorted, y_sorted, *need)


def reference_grads(x, w, b, din, dout, strict, act, gy):
    """y and (dx, dW, db) of the reference, in float64 (then cast to x's dtype)."""
    leaves = [t.detach().double().requires_grad_(True) if t is not None else None for t in (x, w, b)]
    y = reference(*leaves, din, dout, strict, act)
    grads = torch.autograd.grad(y, [t for t in leaves if t is not None], gy.double())
    grads = list(grads) + [None] * (3 - len(grads))
    return y.detach().to(x.dtype), [g.to(x.dtype) if g is not None else None for g in grads]


def check(name, got, want, **tol):
    err = (got.double() - want.double()).abs()
    torch.testing.assert_close(got, want, **tol,
                               msg=lambda m: f"{name}: max err {err.max():.3g}, mean {err.mean():.3g}\n{m}")


def data(B, I, O, dtype, seed, bias=True, degrees="random"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, I, generator=g, dtype=dtype)
    w = (torch.randn(O, I, generator=g, dtype=torch.float64) / max(I, 1) ** 0.5).to(dtype)
    b = torch.randn(O, generator=g, dtype=dtype) if bias else None
    if degrees == "random":  # ties, units reaching nothing and units reaching everything
        din, dout = torch.randint(1, 12, (I,), generator=g), torch.randint(0, 13, (O,), generator=g)
    else:  # a wide staircase: degrees spread over 1..D
        D = max(I, O)
        din, dout = torch.randint(1, D + 1, (I,), generator=g), torch.randint(0, D + 1, (O,), generator=g)
    gy = torch.randn(B, O, generator=g, dtype=dtype)
    return x, w, b, din, dout, gy


def tolerance(dtype, n):
    return {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5 * n}


SHAPES = [(3, 37, 53, True, "random"), (70, 130, 67, False, "staircase"), (1, 5, 301, True, "random"),
          (129, 1, 9, True, "random"), (65, 200, 129, True, "staircase")]


@needs_tileref
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("B, I, O, bias, degrees", SHAPES)
def test_tileref_matches_reference(dtype, act, strict, B, I, O, bias, degrees):
    x, w, b, din, dout, gy = data(B, I, O, dtype, seed=B * 7919 + I * 31 + O, bias=bias, degrees=degrees)
    with ml_ops.caching(False):
        y = tileref(x, w, b, din, dout, strict, act)
        y_ref, grads_ref = reference_grads(x, w, b, din, dout, strict, act, gy)
        check("y", y, y_ref, **tolerance(dtype, I))
        dx, dw, db = tileref_backward(gy, x, w, y, din, dout, strict, act, need=(True, True, bias))
    for name, got, want, n in (("dx", dx, grads_ref[0], O), ("dW", dw, grads_ref[1], B), ("db", db, grads_ref[2], B)):
        if want is None:
            assert got is None
        else:
            check(name, got, want, **tolerance(dtype, n))
    assert (dw[degree_mask(din, dout, strict, torch.bool).logical_not()] == 0).all()  # exact zeros off the mask


def tile_kinds(din, dout, strict, M_out, N_in):
    """Kinds of the forward product's B tiles (the rule of ml::classify_tile), visited or not."""
    ins, _ = torch.sort(din, stable=True)
    outs, _ = torch.sort(dout, stable=True)
    conn = (lambda o, i: o > i) if strict else (lambda o, i: o >= i)
    kinds = set()
    for o0 in range(0, M_out, TILE_N):
        o1 = min(o0 + TILE_N, M_out)
        for i0 in range(0, N_in, TILE_K):
            i1 = min(i0 + TILE_K, N_in)
            kinds.add("zero" if not conn(outs[o1 - 1], ins[i0]) else
                      "ones" if conn(outs[o0], ins[i1 - 1]) else "mixed")
    return kinds


@needs_tileref
@pytest.mark.parametrize("strict", [False, True])
def test_made_staircase_has_every_tile_kind_and_matches(strict):
    """MADE degrees over several tiles: zero tiles (skipped), all-one tiles (no compare) and mixed ones."""
    g = torch.Generator().manual_seed(5)
    D, H = 150, 260
    m0 = ref_made.input_degrees(torch.randperm(D, generator=g))
    (m1,) = ref_made.hidden_degrees(m0, [H], g)
    din, dout = (m1, m0) if strict else (m0, m1)
    I, O = din.numel(), dout.numel()
    assert tile_kinds(din, dout, strict, O, I) == {"zero", "ones", "mixed"}
    x = torch.randn(77, I, generator=g)
    w = torch.randn(O, I, generator=g) / I ** 0.5
    b = torch.randn(O, generator=g)
    gy = torch.randn(77, O, generator=g)
    y = tileref(x, w, b, din, dout, strict, "relu")
    y_ref, grads_ref = reference_grads(x, w, b, din, dout, strict, "relu", gy)
    check("y", y, y_ref, rtol=1e-4, atol=1e-4)
    for name, got, want in zip(("dx", "dW", "db"), tileref_backward(gy, x, w, y, din, dout, strict, "relu"),
                               grads_ref):
        check(name, got, want, rtol=1e-4, atol=1e-4)


@needs_tileref
@pytest.mark.parametrize("act", ["none", "tanh"])
def test_masked_weights_are_never_read(act):
    """NaN in every masked-out weight: zero tiles are skipped and mixed tiles select (not multiply) on load,
    so no NaN reaches y or dx; dW is exactly zero there."""
    x, w, b, din, dout, gy = data(40, 150, 140, torch.float32, seed=11, degrees="staircase")
    mask = degree_mask(din, dout, True, torch.bool)
    w_nan = w.masked_fill(~mask, float("nan"))
    with ml_ops.caching(False):
        y = tileref(x, w_nan, b, din, dout, True, act)
        dx, dw, db = tileref_backward(gy, x, w_nan, y, din, dout, True, act)
    y_ref, (dx_ref, dw_ref, db_ref) = reference_grads(x, w, b, din, dout, True, act, gy)
    for name, got, want in (("y", y, y_ref), ("dx", dx, dx_ref), ("dW", dw, dw_ref), ("db", db, db_ref)):
        assert not got.isnan().any(), name
        check(name, got, want, rtol=1e-4, atol=1e-4)


@needs_tileref
@pytest.mark.parametrize("x_sorted, y_sorted", [(True, False), (False, True), (True, True)])
def test_sorted_inputs_and_outputs(x_sorted, y_sorted):
    """x_sorted / y_sorted (chained MADE layers): columns in the stable degree order, the same order as the
    C++ backend's prepare; dW and db stay in the user's layout."""
    x, w, b, din, dout, gy = data(9, 45, 70, torch.float64, seed=3)
    p = ml_ops.prepare_sorted(w, din, dout)
    q = C.masked_linear_prepare(w, din, dout, False, 8)
    assert torch.equal(p.perm_in, q[1]) and torch.equal(p.perm_out, q[2])
    y_ref, (dx_ref, dw_ref, db_ref) = reference_grads(x, w, b, din, dout, False, "elu", gy)
    xs = x[:, p.perm_in] if x_sorted else x
    y = tileref(xs, w, b, din, dout, False, "elu", x_sorted, y_sorted)
    torch.testing.assert_close(y, y_ref[:, p.perm_out] if y_sorted else y_ref)
    gys = gy[:, p.perm_out] if y_sorted else gy
    dx, dw, db = tileref_backward(gys, xs, w, y, din, dout, False, "elu", x_sorted, y_sorted)
    torch.testing.assert_close(dx, dx_ref[:, p.perm_in] if x_sorted else dx_ref)
    torch.testing.assert_close(dw, dw_ref)
    torch.testing.assert_close(db, db_ref)


@needs_tileref
def test_only_requested_gradients_and_half_precision():
    x, w, b, din, dout, gy = data(5, 20, 30, torch.float32, seed=4)
    y = tileref(x, w, b, din, dout, False, "relu")
    dx, dw, db = tileref_backward(gy, x, w, y, din, dout, False, "relu", need=(False, True, False))
    assert dx is None and db is None and dw.shape == w.shape
    xb, wb, bb, gyb = (t.to(torch.bfloat16) for t in (x, w, b, gy))
    p = ml_ops.prepare_sorted(wb, din, dout)
    assert p.w_sorted.dtype == torch.float32  # computed in fp32
    yb = tileref(xb, wb, bb, din, dout, False, "relu")
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb, reference(xb.float(), wb.float(), bb.float(), din, dout, False, "relu").to(
        torch.bfloat16))
    grads = tileref_backward(gyb, xb, wb, yb, din, dout, False, "relu")
    assert all(g.dtype == torch.bfloat16 for g in grads)


@needs_tileref
@pytest.mark.parametrize("change, err, match", [
    (dict(x=torch.randn(2, 4)), ValueError, "x must have shape"),
    (dict(x=torch.ones(2, 5, dtype=torch.long)), TypeError, "x must be a floating"),
    (dict(perm_in=torch.arange(4)), ValueError, "perm_in must have shape"),
    (dict(out_sorted=torch.ones(3)), TypeError, "out_sorted must be int64"),
    (dict(bias=torch.randn(4)), ValueError, "bias must have shape"),
    (dict(activation=7), ValueError, "activation must be"),
])
def test_bad_arguments_are_named(change, err, match):
    w = torch.randn(3, 5)
    p = ml_ops.prepare_sorted(w, torch.ones(5, dtype=torch.long), torch.ones(3, dtype=torch.long))
    args = dict(x=torch.randn(2, 5), w_sorted=p.w_sorted, bias=torch.randn(3), perm_in=p.perm_in,
                perm_out=p.perm_out, in_sorted=p.in_sorted, out_sorted=p.out_sorted, strict=False, activation=1,
                x_sorted=False, y_sorted=False)
    args.update(change)
    with pytest.raises(err, match=match):
        C.masked_linear_tileref_forward(**args)


@pytest.fixture
def tileref_as_cuda(monkeypatch):
    """The custom op's 'cuda' branch with the tile-reference standing in for armodel_fast._C_cuda."""
    fake = type("FakeCudaExt", (), {"masked_linear_forward": staticmethod(C.masked_linear_tileref_forward),
                                    "masked_linear_backward": staticmethod(C.masked_linear_tileref_backward)})
    monkeypatch.setattr(ml_launchers, "_cuda", lambda: fake)


@needs_tileref
@pytest.mark.parametrize("act", list(ACTS))
def test_cuda_branch_of_the_custom_op(tileref_as_cuda, act):
    """prepare_sorted, argument order and autograd of backend='cuda', run on the CPU; fp64 gradcheck."""
    g = torch.Generator().manual_seed(8)
    x, w, b = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in ((4, 7), (6, 7), (6,)))
    din, dout = torch.tensor([1, 3, 2, 1, 4, 2, 5]), torch.tensor([0, 2, 4, 1, 3, 5])
    for strict in (False, True):
        with ml_ops.caching(False):  # gradcheck perturbs w through .data, unseen by the version counter
            assert torch.autograd.gradcheck(
                lambda x, w, b: ml_ops._masked_linear_op(x, w, b, din, dout, strict, act, "cuda"), (x, w, b))
        y = ml_ops._masked_linear_op(x, w, b, din, dout, strict, act, "cuda")
        torch.testing.assert_close(y, reference(x, w, b, din, dout, strict, act))


# ---- the real CUDA backend ---------------------------------------------------------------

@needs_tileref
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: torch.cuda.is_available() is False")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("B, I, O, bias, degrees", SHAPES + [(300, 700, 530, True, "staircase")])
def test_cuda_backend_matches_reference(dtype, act, strict, B, I, O, bias, degrees):
    why = dispatch._why_not("cuda", "masked_linear", torch.device("cuda"))
    assert why is None, f"a CUDA GPU is here but the cuda backend cannot run masked_linear: {why}"
    x, w, b, din, dout, gy = data(B, I, O, torch.float32, seed=B + I + O, bias=bias, degrees=degrees)
    y32, grads32 = reference_grads(x, w, b, din, dout, strict, act, gy)  # float64 math, fp32 result
    xl, wl, bl, gyl = (t.to(dtype).cuda().requires_grad_(t is not gy) if t is not None else None
                       for t in (x, w, b, gy))
    y = ml_ops.masked_linear(xl, wl, bl, din, dout, strict, act, backend="cuda")
    got = torch.autograd.grad(y, [t for t in (xl, wl, bl) if t is not None], gyl)
    outs = [("y", y, y32)] + list(zip(("dx", "dW", "db"), got, grads32))
    if dtype == torch.float32:
        # --use_fast_math: tanh runs tanh.approx.f32 (relative error ~5e-4)
        tol = {"rtol": 2e-3, "atol": 2e-3} if act == "tanh" else {"rtol": 1e-4, "atol": 1e-4}
        for name, a, e in outs:
            check(name, a.cpu(), e, **tol)
        p = ml_ops.prepare_sorted(w, din, dout)  # the tile-reference on the same data
        yt = C.masked_linear_tileref_forward(x, p.w_sorted, b, p.perm_in, p.perm_out, p.in_sorted, p.out_sorted,
                                             strict, CODES[act], False, False)
        check("y vs tile-reference", y.detach().cpu(), yt, **tol)
    else:
        # bf16 in, fp32 inside: the kernel's error at most twice that of the reference run in bf16 (+ slack)
        lows = [t.to(dtype).detach().requires_grad_(t is not gy) if t is not None else None for t in (x, w, b, gy)]
        y_low = reference(*lows[:3], din, dout, strict, act)
        low = [y_low] + list(torch.autograd.grad(y_low, [t for t in lows[:3] if t is not None], lows[3]))
        for (name, a, e), r in zip(outs, low):
            err = (a.detach().cpu().double() - e.double()).abs().max().item()
            ref_err = (r.detach().double() - e.double()).abs().max().item()
            assert err <= 2 * ref_err + 1e-2, f"{name}: kernel error {err:.3g}, bf16 reference error {ref_err:.3g}"
