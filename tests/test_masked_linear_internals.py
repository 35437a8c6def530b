"""Backend internals of masked_linear (the op-level checks over every backend: test_masked_linear.py).

Part 1, the Triton kernels (launcher level) against the reference ``act(F.linear(x, W*M, b))``.

Without a GPU they run under the Triton interpreter on CPU tensors
(TRITON_INTERPRET=1, set before triton is imported), so shapes stay small;
sizes are not multiples of the blocks and ``blocks=(16, 16, 16)`` makes several
tiles of every kind (all zero, all one, mixed) in one layer.

Tolerances (against the reference in fp64, y and every gradient):
fp32 (ieee dots, fp32 accumulation over at most 60 terms of O(1) products):
atol = rtol = 1e-5; fp64: atol 1e-12, rtol 1e-10. fp16/bf16 (STYLE.md, the
flash-attention rule): the kernel's max error is at most twice that of the
PyTorch reference computed in the low dtype, plus 1e-3 x the tensor's scale
(so that an exact low-precision reference does not demand an exact kernel).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from armodel_fast.kernels import masked_linear_triton as mlt  # noqa: E402
from armodel_fast.ops import masked_linear as ml_ops  # noqa: E402
from armodel_fast.ops.masked_linear import launchers as ml_launchers  # noqa: E402
from armodel_fast.reference import made as ref_made  # noqa: E402
from armodel_fast.reference.masked_linear import degree_mask, masked_linear as ref_masked_linear  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ACTS = {"none": lambda t: t, "relu": F.relu, "elu": F.elu, "tanh": torch.tanh}
BLOCKS = (16, 16, 16)
LOW = (torch.float16, torch.bfloat16)


def _data(B, K, N, dtype, seed, bias=True, dmax=8):
    """x, W, b, unsorted degrees (ties, units reaching nothing and everything) and dy."""
    g = torch.Generator().manual_seed(seed)
    x, w, gy = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((B, K), (N, K), (B, N)))
    b = torch.randn(N, generator=g, dtype=torch.float64) if bias else None
    din, dout = torch.randint(1, dmax, (K,), generator=g), torch.randint(0, dmax + 1, (N,), generator=g)
    return x, w, b, din, dout, gy


def _reference(x, w, b, din, dout, strict, act, gy):
    """y and (dx, dW[, db]) of the reference by autograd, in x's dtype."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b) if t is not None]
    y = ACTS[act](ref_masked_linear(leaves[0], leaves[1], leaves[2] if b is not None else None, din, dout, strict))
    return y.detach(), torch.autograd.grad(y, leaves, gy)


def _close(what, got, ref64, ref_low, dtype):
    """``got`` (the kernel's, in ``dtype``) against the fp64 reference, tolerance by dtype (module docstring)."""
    assert got.dtype == dtype and got.shape == ref64.shape, f"{what}: {got.dtype} {tuple(got.shape)}"
    got, ref64 = got.double().cpu(), ref64.double().cpu()
    err = (got - ref64).abs()
    msg = f"{what} [{dtype}]: max err {err.max():.3g}, mean {err.mean():.3g}"
    if dtype in LOW:
        bound = 2 * (ref_low.double().cpu() - ref64).abs().max() + 1e-3 * max(1.0, ref64.abs().max().item())
        assert err.max() <= bound, f"{msg} > bound {bound:.3g}"
    else:
        tol = dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got, ref64, **tol, msg=lambda m: f"{msg}\n{m}")


def _run_launchers(x, w, b, din, dout, strict, act, gy, **kw):
    """Forward + backward through the launchers; inputs already degree-sorted."""
    y = mlt.masked_linear_forward(x, w, b, din, dout, strict, act, **kw)
    return y, mlt.masked_linear_backward(gy, x, w, y, din, dout, strict, act, need_db=b is not None, **kw)


def _sorted(x, w, b, din, dout, gy):
    din, pin = torch.sort(din, stable=True)
    dout, pout = torch.sort(dout, stable=True)
    return x[:, pin], w[pout][:, pin], None if b is None else b[pout], din, dout, gy[:, pout]


def _to(dtype, *ts):
    return [None if t is None else t.to(device=DEVICE, dtype=dtype if t.is_floating_point() else t.dtype)
            .contiguous() for t in ts]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("act", list(ACTS))
def test_launchers_match_reference(act, strict, bias, dtype):
    """in=37, out=29, B=5: 3 x 2 x 2 tiles of 16, every kind of tile, y / dx / dW / db."""
    x, w, b, din, dout, gy = _sorted(*_data(5, 37, 29, dtype, seed=37 * strict + 3 * len(act), bias=bias))
    y, (dx, dw, db) = _run_launchers(*_to(dtype, x, w, b, din, dout), strict, act, _to(dtype, gy)[0],
                                     blocks=BLOCKS)
    y64, grads64 = _reference(x, w, b, din, dout, strict, act, gy)
    low = [t.to(dtype) if t is not None else None for t in (x, w, b, gy)]
    y_low, grads_low = _reference(low[0], low[1], low[2], din, dout, strict, act, low[3])
    for name, got, r64, rlow in zip(("y", "dx", "dW", "db"), (y, dx, dw, db), (y64, *grads64),
                                    (y_low, *grads_low)):
        if name == "db" and not bias:
            assert got is None
            continue
        _close(f"{act} strict={strict} {name}", got, r64, rlow, dtype)


@pytest.mark.parametrize("dtype, B, K, N", [(torch.float16, 7, 20, 45), (torch.float64, 3, 50, 17),
                                            (torch.float32, 1, 1, 33), (torch.float32, 40, 16, 16)])
def test_launchers_other_dtypes_and_shapes(dtype, B, K, N):
    x, w, b, din, dout, gy = _sorted(*_data(B, K, N, dtype, seed=B + K + N))
    for strict, act in ((False, "elu"), (True, "tanh")):
        y, grads = _run_launchers(*_to(dtype, x, w, b, din, dout), strict, act, _to(dtype, gy)[0], blocks=BLOCKS)
        y64, grads64 = _reference(x, w, b, din, dout, strict, act, gy)
        low = [t.to(dtype) for t in (x, w, b, gy)]
        y_low, grads_low = _reference(low[0], low[1], low[2], din, dout, strict, act, low[3])
        for name, got, r64, rlow in zip(("y", "dx", "dW", "db"), (y, *grads), (y64, *grads64), (y_low, *grads_low)):
            _close(f"{act} {name}", got, r64, rlow, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_op_sorts_unsorted_degrees(act, strict, dtype):
    """``masked_linear(..., backend="triton")``: random unsorted degrees, default blocks, leading dims."""
    x, w, b, din, dout, gy = _data(6, 37, 29, dtype, seed=11 + strict)
    x, gy = x.reshape(2, 3, 37), gy.reshape(2, 3, 29)
    leaves = [t.requires_grad_() for t in _to(dtype, x, w, b)]
    y = ml_ops.masked_linear(*leaves, din.to(DEVICE), dout.to(DEVICE), strict, act, backend="triton")
    got = [y, *torch.autograd.grad(y, leaves, _to(dtype, gy)[0])]
    y64, grads64 = _reference(x.reshape(6, 37), w, b, din, dout, strict, act, gy.reshape(6, 29))
    low = [t.to(dtype) for t in (x.reshape(6, 37), w, b, gy.reshape(6, 29))]
    y_low, grads_low = _reference(*low[:3], din, dout, strict, act, low[3])
    for name, g, r64, rlow in zip(("y", "dx", "dW", "db"), got, (y64, *grads64), (y_low, *grads_low)):
        _close(f"op {act} {name}", g.detach().reshape(r64.shape), r64, rlow, dtype)


def test_op_sorted_layouts_match_cpp_order():
    """``x_sorted``/``y_sorted`` (chained MADE layers): the stable degree order of every backend."""
    x, w, b, din, dout, gy = _data(4, 23, 31, torch.float32, seed=5)
    pin, pout = torch.sort(din, stable=True).indices, torch.sort(dout, stable=True).indices
    leaves = [t.requires_grad_() for t in _to(torch.float32, x[:, pin], w, b)]
    y = ml_ops._masked_linear_op(*leaves, din.to(DEVICE), dout.to(DEVICE), False, "elu", "triton", True, True)
    got = [y, *torch.autograd.grad(y, leaves, _to(torch.float32, gy[:, pout])[0])]
    y64, (dx, dw, db) = _reference(x, w, b, din, dout, False, "elu", gy)
    want = (y64[:, pout], dx[:, pin], dw, db)
    for name, g, r64 in zip(("y", "dx", "dW", "db"), got, want):
        _close(f"sorted {name}", g.detach(), r64, None, torch.float32)


def _tile_kinds(din, dout, strict, bn, bk):
    """Counts of all-one / mixed / all-zero (bn x bk) tiles of the sorted [N, K] mask."""
    m = degree_mask(din, dout, strict, torch.float32)
    kinds = {"one": 0, "mixed": 0, "skipped": 0}
    for n0 in range(0, m.shape[0], bn):
        for k0 in range(0, m.shape[1], bk):
            t = m[n0:n0 + bn, k0:k0 + bk]
            kinds["one" if bool(t.all()) else "skipped" if not bool(t.any()) else "mixed"] += 1
    return kinds


@pytest.mark.parametrize("strict", [False, True])
def test_zero_tiles_are_skipped(strict):
    """MADE degrees (D=60, H=90): the kernels compute exactly the non-zero tiles of the
    staircase (counted in the kernels), skip the rest, and the results stay exact."""
    g = torch.Generator().manual_seed(2)
    m0 = ref_made.input_degrees(torch.randperm(60, generator=g))
    (m1,) = ref_made.hidden_degrees(m0, [90], g)
    din, dout = (m1, m0) if strict else (m0, m1)
    x, w, b, _, _, gy = _data(20, din.numel(), dout.numel(), torch.float32, seed=3)
    x, w, b, din, dout, gy = _sorted(x, w, b, din, dout, gy)
    counts = {}
    y, grads = _run_launchers(*_to(torch.float32, x, w, b, din, dout), strict, "relu", _to(torch.float32, gy)[0],
                              blocks=BLOCKS, tile_counts=counts)
    kinds = _tile_kinds(din, dout, strict, 16, 16)
    n_m = -(-20 // 16)  # batch tiles: the fwd and dx grids repeat the (out x in) tiles per batch tile
    assert kinds["skipped"] > 0 and kinds["one"] > 0 and kinds["mixed"] > 0
    for kind, reps in (("fwd", n_m), ("dx", n_m), ("dw", 1)):
        want = {k: v * reps for k, v in kinds.items()}
        assert {k: counts[kind][k] for k in want} == want, (kind, counts[kind], want)
        assert counts[kind]["total"] == sum(want.values())
    y64, grads64 = _reference(x, w, b, din, dout, strict, "relu", gy)
    for name, got, r64 in zip(("y", "dx", "dW", "db"), (y, *grads), (y64, *grads64)):
        _close(name, got, r64, None, torch.float32)


def test_disconnected_and_dense_layers():
    """Nothing connected: every tile skipped, y = act(bias), dW = 0; fully connected: no compare."""
    x, w, b, _, _, gy = _data(5, 20, 18, torch.float32, seed=9)
    for din, dout, kinds in ((torch.full((20,), 5), torch.full((18,), 2), ("skipped",)),
                             (torch.sort(torch.arange(20) % 3).values, torch.full((18,), 4), ("one",))):
        counts = {}
        y, (dx, dw, db) = _run_launchers(*_to(torch.float32, x, w, b, din, dout), False, "tanh",
                                         _to(torch.float32, gy)[0], blocks=BLOCKS, tile_counts=counts)
        for kind in ("fwd", "dx", "dw"):
            assert all(counts[kind][k] == counts[kind]["total"] for k in kinds), counts[kind]
        y64, grads64 = _reference(x, w, b, din, dout, False, "tanh", gy)
        for name, got, r64 in zip(("y", "dx", "dW", "db"), (y, dx, dw, db), (y64, *grads64)):
            _close(name, got, r64, None, torch.float32)


def test_empty_batch_and_need_flags():
    x, w, b, din, dout, gy = _sorted(*_data(0, 9, 7, torch.float32, seed=1))
    args = _to(torch.float32, x, w, b, din, dout)
    y, (dx, dw, db) = _run_launchers(*args, True, "elu", _to(torch.float32, gy)[0])
    assert y.shape == (0, 7) and dx.shape == (0, 9) and not dw.any() and not db.any()
    x, w, b, din, dout, gy = _sorted(*_data(3, 9, 7, torch.float32, seed=1))
    args = _to(torch.float32, x, w, b, din, dout)
    y = mlt.masked_linear_forward(*args, True, "relu")
    dx, dw, db = mlt.masked_linear_backward(_to(torch.float32, gy)[0], args[0], args[1], y, *args[3:], True,
                                            "relu", need_dx=False, need_dw=False)
    assert dx is None and dw is None
    _close("db", db, _reference(x, w, b, din, dout, True, "relu", gy)[1][2], None, torch.float32)


def test_prepared_operands_cached_per_backend():
    x, w, b, din, dout, _ = _data(3, 12, 10, torch.float32, seed=4)
    w = w.float().to(DEVICE)
    ml_ops.clear_cache()
    hits = ml_ops.cache_info()["hits"]
    for _ in range(3):
        ml_ops.masked_linear(x.float().to(DEVICE), w, None, din, dout, False, "none", backend="triton")
    info = ml_ops.cache_info()
    # two entries per weight (the prepared operands and the masked-out non-finite check), each reused twice
    assert info["entries"] == 2 and info["hits"] == hits + 4
    p = ml_ops.prepare_triton(w, din, dout, False)
    assert p.in_sorted.dtype == torch.int32 and torch.equal(p.w_sorted, w[p.perm_out][:, p.perm_in])
    with torch.no_grad():
        w.mul_(2)  # a new version: rebuilt
    assert not torch.equal(ml_ops.prepare_triton(w, din, dout, False).w_sorted, p.w_sorted)


def _args(**over):
    x, w, b, din, dout, _ = _sorted(*_data(3, 6, 4, torch.float32, seed=0))
    args = dict(x=x.float(), w=w.float(), bias=b.float(), in_deg=din, out_deg=dout, strict=False, activation="relu")
    args.update(over)
    return args


@pytest.mark.parametrize("over, err, match", [
    (dict(x=torch.ones(3, 6, dtype=torch.long)), TypeError, "x must have dtype"),
    (dict(x=torch.randn(3, 5)), ValueError, "x must have shape"),
    (dict(x=torch.randn(6, 3).t()), ValueError, "x must be contiguous"),
    (dict(x=[[0.0] * 6] * 3), TypeError, "x must be a torch.Tensor"),
    (dict(w=torch.randn(4, 6, 1)), ValueError, "w must have shape"),
    (dict(w=torch.randn(4, 6).to(torch.int32)), TypeError, "w must have dtype"),
    (dict(bias=torch.randn(5)), ValueError, "bias must have shape"),
    (dict(bias=torch.randn(4, dtype=torch.float64)), TypeError, "bias must have dtype"),
    (dict(in_deg=torch.tensor([3, 1, 2, 2, 4, 5])), ValueError, "in_deg must be sorted"),
    (dict(in_deg=torch.ones(6)), TypeError, "in_deg must hold integer"),
    (dict(out_deg=torch.ones(5, dtype=torch.long)), ValueError, "out_deg must have shape"),
    (dict(out_deg=torch.tensor([0, 1, 2, 2 ** 40])), ValueError, "out_deg must fit in int32"),
    (dict(strict=1), TypeError, "strict must be a bool"),
    (dict(activation="gelu"), ValueError, "activation must be one of"),
    (dict(blocks=(24, 16, 16)), ValueError, "blocks must be"),
    (dict(input_precision="fast"), ValueError, "input_precision"),
    (dict(reach=torch.zeros(4, dtype=torch.int64), col_start=torch.zeros(6, dtype=torch.int32)), TypeError,
     "reach must have dtype"),
])
def test_bad_inputs(over, err, match):
    args = _args(**over)
    args = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(err, match=match):
        mlt.masked_linear_forward(*[args.pop(k) for k in ("x", "w", "bias", "in_deg", "out_deg", "strict",
                                                          "activation")], **args)


@pytest.mark.parametrize("grad_y, y, err, match", [
    (torch.randn(3, 5), "ok", ValueError, "grad_y must have shape"),
    (torch.ones(3, 4, dtype=torch.long), "ok", TypeError, "grad_y must have dtype"),
    (torch.randn(3, 4), None, ValueError, "y .* is required"),
    (torch.randn(3, 4), torch.randn(3, 4, dtype=torch.float64), TypeError, "y must have dtype"),
])
def test_bad_backward_inputs(grad_y, y, err, match):
    a = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in _args().items()}
    y = torch.zeros(3, 4, device=DEVICE) if isinstance(y, str) else y
    with pytest.raises(err, match=match):
        mlt.masked_linear_backward(grad_y.to(DEVICE), a["x"], a["w"], y if y is None else y.to(DEVICE),
                                   a["in_deg"], a["out_deg"], False, "relu")


def test_launch_config_caps():
    """Heuristic blocks: powers of 2, >= 16, within the spill-free caps (tests/test_triton_aot.py)."""
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        for shape in ((1, 1, 1), (5, 37, 29), (4096, 2048, 2048), (128, 784, 500)):
            for kind in ("fwd", "dact", "dx", "dw"):
                cfg = mlt.launch_config(kind, *shape, dtype)
                blocks = [cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in cfg]
                assert all(b >= 16 and b & (b - 1) == 0 for b in blocks), (kind, shape, cfg)
    assert mlt.launch_config("fwd", 4096, 2048, 2048, torch.bfloat16)["BLOCK_M"] == 128
    assert mlt.launch_config("fwd", 4096, 2048, 2048, torch.bfloat16)["num_warps"] == 8


# ==== Part 2: the CUDA tile code on the CPU (tile-reference) =========================================
"""The CUDA masked_linear tile code (csrc/masked_linear/masked_linear_math.h + masked_linear_glue.h), run on the CPU by
the tile-reference, against F.linear(x, W*M, b): y, dx, dW, db; and the real CUDA backend on a GPU.

The CUDA kernels and the tile-reference make every mask decision through the same header code (k range
of an output tile, zero / all-one / mixed tile kinds, the per-element compare on load, the epilogue with
bias and activation, the dW mask) and share the torch glue, so these CPU tests check the GPU's math
(docs/DESIGN.md section 5). Sizes are not multiples of the 64 x 64 x 16 tile.
"""
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from armodel_fast import _ext, dispatch  # noqa: E402
from armodel_fast.ops import masked_linear as ml_ops  # noqa: E402
from armodel_fast.reference import made as ref_made  # noqa: E402
from armodel_fast.reference.masked_linear import degree_mask  # noqa: E402

C = _ext.get_ext()
needs_tileref = pytest.mark.skipif(C is None or not hasattr(C, "masked_linear_tileref_forward"),
                                reason=f"C++ extension without the masked_linear tile-reference: {_ext.ext_error()}")

CODES = ml_ops.ACTIVATIONS
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
