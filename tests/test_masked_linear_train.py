"""The C++ masked layer's training path (issue 14) and ``auto``'s size rule.

Sorted degrees (MADE's hidden layers, a natural-order input/output layer): the kernels run on
the caller's weights (strided blocks plus a masked copy of each block's ragged slab) and
write grad W in place; other degrees go through the gathered (prepared) weights. Both must
give the reference's values and gradients, grad W exactly zero outside the mask, and keep
state_dict / optimizers (fused or not) / next_mask / .weight writes behaving as with the
reference.
"""
import pytest
import torch
import torch.nn.functional as F

import armodel_fast as af
from armodel_fast import _ext, dispatch
from armodel_fast.ops.masked_linear import cache_info, degrees_sorted, launchers, masked_linear
from armodel_fast.reference import made as ref_made
from armodel_fast.reference.masked_linear import degree_mask

CPP = _ext.get_ext() is not None and hasattr(_ext.get_ext(), "masked_linear_plan")
pytestmark = pytest.mark.skipif(not CPP, reason=f"no cpp masked_linear training path here:\n{af.explain('masked_linear')}")
ACT = {"none": lambda t: t, "relu": F.relu, "elu": F.elu, "tanh": torch.tanh}


def degrees(n_in, n_out, D, sorted_in, sorted_out, g):
    din = torch.randint(1, D + 1, (n_in,), generator=g)
    dout = torch.randint(1, D + 1, (n_out,), generator=g)
    return (din.sort().values if sorted_in else din), (dout.sort().values if sorted_out else dout)


def check_against_reference(x, w, b, din, dout, strict, act, dtype):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    ref = [t.detach().clone().requires_grad_() for t in leaves]
    bb = leaves[2] if b is not None else None
    y = masked_linear(leaves[0], leaves[1], bb, din, dout, strict, act, backend="cpp")
    mask = degree_mask(din, dout, strict, dtype)
    y_ref = ACT[act](F.linear(ref[0], ref[1] * mask, ref[2] if b is not None else None))
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
    y.backward(g)
    y_ref.backward(g)
    tol = {"rtol": 1e-4, "atol": 5e-5} if dtype == torch.float32 else {}  # sums of 300 terms ~ 1e1
    torch.testing.assert_close(y, y_ref, **tol)
    for got, want in zip(leaves, ref):
        torch.testing.assert_close(got.grad, want.grad, **tol)
    assert bool((leaves[1].grad[mask == 0] == 0).all()), "grad W must be exactly zero outside the mask"


@pytest.mark.parametrize("sorted_in, sorted_out", [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("act", ["none", "relu", "tanh"])
def test_training_path_matches_reference(sorted_in, sorted_out, strict, act):
    g = torch.Generator().manual_seed(0)
    for n_in, n_out, D, B, dtype in [(37, 150, 30, 9, torch.float64), (300, 260, 200, 16, torch.float32),
                                     (5, 3, 4, 2, torch.float64)]:
        din, dout = degrees(n_in, n_out, D, sorted_in, sorted_out, g)
        w = torch.randn(n_out, n_in, generator=g, dtype=dtype)
        b = torch.randn(n_out, generator=g, dtype=dtype) if act != "none" else None
        x = torch.randn(B, n_in, generator=g, dtype=dtype)
        in_order = degrees_sorted(din) and degrees_sorted(dout)  # (tiny random ones can be sorted)
        assert in_order >= (sorted_in and sorted_out)
        assert (launchers._in_place_plan(w, din, dout, strict) is not None) == in_order
        check_against_reference(x, w, b, din, dout, strict, act, dtype)


def test_sorted_training_step_gathers_no_weights():
    """A training step on sorted degrees builds no prepared (gathered) weights; grad W is in place."""
    g = torch.Generator().manual_seed(1)
    din, dout = degrees(120, 200, 60, True, True, g)
    w = torch.randn(200, 120, generator=g, requires_grad=True)
    x = torch.randn(8, 120, generator=g)
    before = cache_info()["builds"]
    for _ in range(3):
        torch.autograd.graph.increment_version(w)
        masked_linear(x, w, None, din, dout, False, "relu", backend="cpp").sum().backward()
    assert cache_info()["builds"] == before
    assert bool((w.grad[degree_mask(din, dout, False, torch.bool).logical_not()] == 0).all())


def test_slabs_and_plan_layout():
    """blocks [nb, 4] cover the rows that reach an input; every row of a block reaches [0, c0)
    and the last one [0, c1); the slab copy is W[r0:r1, c0:c1] masked."""
    ext = _ext.get_ext()
    g = torch.Generator().manual_seed(2)
    din, dout = degrees(90, 140, 40, True, True, g)
    pi, po, reach, blocks, identity = ext.masked_linear_plan(din, dout, True, 16)
    assert identity and torch.equal(pi, torch.arange(90)) and torch.equal(po, torch.arange(140))
    w = torch.randn(140, 90, generator=g)
    slabs = ext.masked_linear_slabs(w, reach, blocks)
    mask = degree_mask(din, dout, True, w.dtype)
    off, prev = 0, None
    for r0, r1, c0, c1 in blocks.tolist():
        assert prev is None or r0 == prev
        assert int(reach[r0]) == c0 and int(reach[r1 - 1]) == c1 and c0 <= c1
        n = (r1 - r0) * (c1 - c0)
        torch.testing.assert_close(slabs[off:off + n].view(r1 - r0, c1 - c0), (w * mask)[r0:r1, c0:c1],
                                   rtol=0, atol=0)
        off, prev = off + n, r1
    assert off == slabs.numel() and prev == 140 and int((reach[:blocks[0, 0]] != 0).sum()) == 0


@pytest.mark.parametrize("threads", [1, 3, 8])
@pytest.mark.parametrize("sorted_in", [True, False])
def test_kernels_split_over_threads_match_reference(threads, sorted_in):
    """The kernels split the blocks (forward, grad W) and grad x's columns over the threads:
    the same values for any thread count, with more blocks than threads (the large layer) and
    fewer (the tiny one), and more threads than grad x has columns (the tiny one at 8)."""
    g = torch.Generator().manual_seed(3)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n_in, n_out, D, B in [(240, 400, 200, 70), (6, 5, 5, 40)]:
            din, dout = degrees(n_in, n_out, D, sorted_in, True, g)
            w, b = torch.randn(n_out, n_in, generator=g), torch.randn(n_out, generator=g)
            x = torch.randn(B, n_in, generator=g)
            for strict, act in [(False, "relu"), (True, "none")]:
                check_against_reference(x, w, b, din, dout, strict, act, torch.float32)
    finally:
        torch.set_num_threads(old)


def test_bias_only_training_reuses_the_prepared_weights():
    """Only the bias trains (x and W frozen): the forward prepares the evaluation layout (anew
    after each backward: a fused optimizer step could have changed W unseen) and the backward
    finds that same entry instead of building a second layout: one build per step. In fp64: fp32
    layers on a CPU with AVX-512 take the one-call kernels, which read W as stored (no layout)."""
    from armodel_fast.ops.masked_linear import clear_cache

    g = torch.Generator().manual_seed(4)
    din, dout = degrees(60, 90, 40, False, False, g)
    w, x = torch.randn(90, 60, generator=g, dtype=torch.float64), torch.randn(8, 60, generator=g, dtype=torch.float64)
    b = torch.randn(90, generator=g, requires_grad=True, dtype=torch.float64)
    clear_cache()
    builds = []
    for _ in range(3):
        masked_linear(x, w, b, din, dout, False, "relu", backend="cpp").sum().backward()
        builds.append(cache_info()["builds"])
    assert builds[2] - builds[1] == builds[1] - builds[0] == 1, builds
    mask = degree_mask(din, dout, False, torch.float64)
    b_ref = b.detach().clone().requires_grad_()
    F.relu(F.linear(x, w * mask, b_ref)).sum().backward()
    torch.testing.assert_close(b.grad, 3 * b_ref.grad)


_DISPATCH_MODE_SCRIPT = """
import threading, time, torch
from torch.utils._python_dispatch import TorchDispatchMode
from armodel_fast.ops.masked_linear import masked_linear
torch.set_num_threads(2)
caller = threading.get_native_id()
class SlowOffTheCallingThread(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if threading.get_native_id() != caller:
            time.sleep(0.01)  # a Python handler that runs on a kernel's worker thread needs the GIL
        return func(*args, **(kwargs or {}))
for sorted_in in (True, False):
    din = torch.arange(256) % 64 + 1
    din = din.sort().values if sorted_in else din
    dout = (torch.arange(512) % 64 + 1).sort().values
    w = torch.randn(512, 256, requires_grad=True)
    x = torch.randn(64, 256, requires_grad=True)
    with SlowOffTheCallingThread():
        masked_linear(x, w, None, din, dout, False, "relu", backend="cpp").sum().backward()
print("done")
"""


def test_kernels_stay_on_the_calling_thread_under_a_dispatch_mode(tmp_path):
    """Under a Python dispatch mode (FlopCounterMode, DebugMode, ...) the kernels' ATen ops run on
    the calling thread: on a worker thread the mode's Python code would wait for the GIL the
    caller holds while it waits for the workers (a deadlock). In a subprocess, so that a hang
    fails the test instead of stopping the suite."""
    import subprocess
    import sys

    script = tmp_path / "mode.py"
    script.write_text(_DISPATCH_MODE_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr[-2000:]


@pytest.mark.parametrize("dtype, bad", [(torch.float32, float("nan")), (torch.float32, float("inf")),
                                        (torch.float64, -float("inf")), (torch.float16, float("nan")),
                                        (torch.bfloat16, float("inf"))])
def test_any_nonfinite_is_exact(dtype, bad):
    ext = _ext.get_ext()
    t = torch.randn(300, 301).to(dtype)
    t[7, 11] = torch.finfo(dtype).max  # large but finite
    t[8, 12] = torch.finfo(dtype).tiny / 4 if dtype != torch.bfloat16 else 0.0  # subnormal
    assert not ext.masked_linear_any_nonfinite(t)
    for pos in [(0, 0), (150, 7), (299, 300)]:
        u = t.clone()
        u[pos] = bad
        assert ext.masked_linear_any_nonfinite(u)
        assert ext.masked_linear_any_nonfinite(u.t())  # non-contiguous


def test_any_nonfinite_checks_broadcast_tensors_without_materialising_them():
    from armodel_fast.ops._autograd import any_nonfinite
    assert not any_nonfinite(torch.ones(()).expand(128, 500))  # the gradient of .sum()
    assert any_nonfinite(torch.tensor([[1.0], [float("nan")], [2.0]]).expand(3, 5))
    assert any_nonfinite(torch.tensor([1.0, -float("inf")]).expand(4, 2))
    assert not any_nonfinite(torch.zeros(0, 3).expand(0, 3))


def test_hidden_degrees_are_sorted_and_drawn_as_before():
    """Hidden units are numbered in degree order; the multiset drawn per layer is unchanged."""
    m0 = ref_made.input_degrees(torch.randperm(50, generator=torch.Generator().manual_seed(0)))
    layers = ref_made.hidden_degrees(m0, [40, 30], torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    first = torch.randint(1, 50, (40,), generator=g)
    assert torch.equal(layers[0], first.sort().values)
    for m in layers:
        assert bool((m[1:] >= m[:-1]).all())


def made_pair(order, fused, **kw):
    ref = af.MADE(20, [48, 40], order=order, num_masks=2, seed=3, dtype=torch.float64, **kw)
    fast = af.MADE(20, [48, 40], order=order, num_masks=2, seed=3, dtype=torch.float64, backend="cpp", **kw)
    fast.load_state_dict(ref.state_dict())
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2, fused=fused) for m in (ref, fast)]
    return (ref, fast), opts


@pytest.mark.parametrize("order", [None, "random"])
@pytest.mark.parametrize("fused", [False, True])
def test_made_adam_training_matches_reference(order, fused):
    """Several Adam steps (fused or not) with mask switching, a .weight write and a
    state_dict round trip in between: the cpp model follows the reference."""
    models, opts = made_pair(order, fused, direct=True)
    x = torch.bernoulli(torch.full((16, 20), 0.5), generator=torch.Generator().manual_seed(0)).double()
    for step in range(6):
        losses = []
        for m, opt in zip(models, opts):
            opt.zero_grad(set_to_none=True)
            loss = -m.log_prob(x).mean()
            loss.backward()
            for layer in list(m.layers) + [m.output, m.direct]:
                assert bool((layer.weight.grad[layer.mask() == 0] == 0).all())
            opt.step()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1])
        if step == 1:
            for m in models:
                m.next_mask()
        if step == 2:
            with torch.no_grad():
                for m in models:
                    m.layers[1].weight.mul_(0.5)
        if step == 3:
            state = models[0].state_dict()
            for m in models:
                m.load_state_dict(state)
        with torch.no_grad():  # evaluation between steps (the prepared-weight cache) agrees too
            torch.testing.assert_close(models[1].log_prob(x), models[0].log_prob(x))
    for p_ref, p_fast in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(p_fast, p_ref)


def test_made_training_step_compiles():
    """torch.compile of a cpp MADE training step gives the eager gradients."""
    torch._dynamo.reset()
    (ref, fast), _ = made_pair(None, False)
    x = torch.bernoulli(torch.full((8, 20), 0.5), generator=torch.Generator().manual_seed(1)).double()
    loss = torch.compile(lambda m: -m.log_prob(x).mean())
    for m in (ref, fast):
        loss(m).backward()
    for p_ref, p_fast in zip(ref.parameters(), fast.parameters()):
        torch.testing.assert_close(p_fast.grad, p_ref.grad)


def test_auto_size_rule():
    """auto takes the reference for small layers (training on unsorted degrees: up to a larger
    size), the kernels for large ones, and explain says why."""
    small = dispatch.Work(128 * 8 * 16, True, True)
    mid_sorted = dispatch.Work(128 * 784 * 500, True, True)
    mid_unsorted = dispatch.Work(128 * 784 * 500, True, False)
    big_unsorted = dispatch.Work(512 * 784 * 2000, True, False)
    mid_eval = dispatch.Work(128 * 784 * 500, False, False)
    big_eval = dispatch.Work(128 * 784 * 2000, False, False)
    resolve = lambda work, op="masked_linear": dispatch.resolve_backend("auto", op, "cpu", work=work)  # noqa: E731
    assert resolve(small) == "reference"
    assert resolve(mid_sorted) == "cpp"
    assert resolve(mid_unsorted) == "reference"
    # unsorted: from 2^27 where the AVX-512 tiles read W through the sorts (fp32), else from 2^28
    tiles = dispatch._tiles_train_unsorted(torch.float32)
    assert tiles == (launchers._train_kernels() == "avx512") and not dispatch._tiles_train_unsorted(torch.float64)
    unsorted_200m = dispatch.Work(128 * 784 * 2000, True, False)
    assert resolve(unsorted_200m) == ("cpp" if tiles else "reference")
    assert resolve(dispatch.Work(128 * 784 * 2000, True, False, torch.float64)) == "reference"  # fp64: gathered
    assert resolve(dispatch.Work(2 ** 27 - 1, True, False)) == "reference"
    # explain's dtype fills in a Work that has none
    assert "auto: reference" in af.explain("masked_linear", "cpu", torch.float64, work=unsorted_200m)
    assert resolve(big_unsorted) == "cpp"
    assert resolve(mid_eval, "made") == "reference"  # evaluation: the kernels win from a larger size
    assert resolve(big_eval, "made") == "cpp"
    assert dispatch.last_auto_pick() == ("made", "cpp", None)
    assert dispatch.resolve_backend("cpp", "masked_linear", "cpu", work=small) == "cpp"  # explicit: as asked
    assert "too small" in af.explain("masked_linear", "cpu", work=small)
    assert "unsorted degrees" in af.explain("masked_linear", "cpu", work=mid_unsorted)
    assert "auto: cpp" in af.explain("masked_linear", "cpu", work=big_unsorted)
    assert "auto: cpp" in af.explain("masked_linear", "cpu", work=mid_sorted)
    layer = af.MaskedLinear(8, 16, torch.arange(8), torch.arange(16) % 8, backend="auto")
    layer(torch.randn(4, 8))
    assert layer.last_backend == "reference"
    made = af.MADE(8, [16], backend="auto")
    made.log_prob(torch.ones(2, 8))
    assert made.last_backend == "reference"
    fvsbn = af.FVSBN(8, backend="auto")  # one masked layer: the same rule
    fvsbn.log_prob(torch.ones(2, 8))
    assert fvsbn.last_backend == "reference"


def test_auto_size_rule_lets_large_models_take_the_kernels(monkeypatch):
    """With the threshold at 0 (every size counts as large) auto takes cpp for the modules
    whose degrees are sorted: the rule, not something else, chose the reference above."""
    monkeypatch.setattr(dispatch, "AUTO_MIN_WORK", {"train": 0, "eval": 0, "train_unsorted": 0, "train_unsorted_tiles": 0})
    for model in (af.FVSBN(8, backend="auto"), af.MADE(8, [16], backend="auto")):
        model.log_prob(torch.ones(2, 8))
        assert model.last_backend == "cpp", type(model).__name__


def test_made_size_rule_takes_the_mean_per_layer():
    """A MADE's work for the rule is the mean B*in*out of its masked layers (each pays the kernels'
    fixed cost): D=256 [400, 400] at B=128 (47M summed, where the kernels measured 0.88x in
    training) stays on the reference; D=784 [500] at B=100 (39M per layer) takes the kernels."""
    small, big = af.MADE(256, [400, 400], backend="auto"), af.MADE(784, [500], backend="auto")
    work = small.auto_work(128)
    assert work.macs == 128 * (256 * 400 + 400 * 400 + 400 * 256) // 3 and work.training and work.sorted
    assert "B*in*out per layer" in dispatch.size_rule_says("made", work)
    assert big.auto_work(100).macs == 100 * 784 * 500
    small.log_prob(torch.ones(128, 256))
    big.log_prob(torch.ones(100, 784))
    assert small.last_backend == "reference" and big.last_backend == "cpp"


@pytest.mark.parametrize("backend", [b for b in dispatch.BACKENDS[1:]
                                     if dispatch._why_not(b, "masked_linear", torch.device("cpu")) is None])
@pytest.mark.parametrize("sorted_degrees", [False, True])
def test_evaluation_between_backward_and_a_fused_step_is_not_stale(backend, sorted_degrees):
    """backward, an evaluation (which rebuilds the entry), then a fused optimizer step (no version
    bump) that moves one unit's weights only (the 64-entry spot check may miss it): the next
    evaluation must see the step (the global optimizer post-step hook marks the entry)."""
    g = torch.Generator().manual_seed(0)
    din = torch.randint(1, 6, (40,), generator=g)
    dout = torch.randint(1, 6, (64,), generator=g)
    if sorted_degrees:
        din, dout = din.sort().values, dout.sort().values
    x = torch.randn(8, 40, generator=g)
    for row in range(0, 64, 7):
        af.clear_cache()
        torch.manual_seed(1)
        m = af.nn.MaskedLinear(40, 64, din, dout, backend=backend)
        keep = torch.zeros(64, 1)
        keep[row] = 1
        m.weight.register_hook(lambda grad: grad * keep)  # fine-tune one unit
        opt = torch.optim.Adam([m.weight], lr=0.1, fused=True)
        opt.zero_grad()
        m(x).square().sum().backward()
        with torch.no_grad():
            m(x)  # an evaluation before the step
        opt.step()
        with torch.no_grad():
            got = m(x)
        torch.testing.assert_close(got, F.linear(x, m.weight * m.mask(), m.bias), msg=f"unit {row}")


@pytest.mark.skipif(not CPP or launchers._train_kernels() != "avx512", reason="the one-node training path runs the "
                    "AVX-512 training kernels, which do not run here")
@pytest.mark.parametrize("sorted_in, sorted_out", [(True, True), (False, True), (True, False), (False, False)])
def test_a_training_call_is_one_node(sorted_in, sorted_out):
    """``masked_linear`` in training: one autograd node (ops/masked_linear/chain.py) with the
    reference's values and gradients, leading batch dimensions included, in any degree order
    (the kernels read through the degree sorts)."""
    g = torch.Generator().manual_seed(3)
    din, dout = degrees(40, 60, 30, sorted_in, sorted_out, g)
    w = torch.randn(60, 40, generator=g, requires_grad=True)
    b = torch.randn(60, generator=g, requires_grad=True)
    x = torch.randn(2, 5, 40, generator=g, requires_grad=True)
    y = masked_linear(x, w, b, din, dout, False, "elu", backend="cpp")
    assert degrees_sorted(din) == sorted_in and degrees_sorted(dout) == sorted_out
    names = {type(y.grad_fn).__name__} | {type(n).__name__ for n, _ in y.grad_fn.next_functions if n is not None}
    assert "_MaskedChainBackward" in names, names
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    y_ref = F.elu(F.linear(leaves[0], leaves[1] * degree_mask(din, dout, False, torch.float32), leaves[2]))
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    gy = torch.randn(y.shape, generator=g)
    y.backward(gy)
    y_ref.backward(gy)
    for got, want in zip((x, w, b), leaves):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5)
