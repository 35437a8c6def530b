"""Triton internals of masked_linear (the op-level checks over every backend: test_masked_linear.py;
the CUDA tile code: test_masked_linear_internals_cuda.py).

The Triton kernels (launcher level) against the reference ``act(F.linear(x, W*M, b))``.

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
