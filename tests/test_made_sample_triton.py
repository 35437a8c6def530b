"""The one-launch MADE samplers (Triton: kernels/made_sample_triton.py, CUDA: csrc/made/made_cuda.cu)
against the D-pass reference sampler.

tests/test_made_fast.py runs every MADE/FVSBN configuration through each backend
available here (Triton under the interpreter on this CPU machine); this file covers
what is particular to the one-launch kernel: degree runs wider than a block, prefixes
longer than a block, several programs walking several sample chunks, padded sample
rows, many classes, half-precision weights, and that only the reachable prefix of
each weight row is ever read. The ``gpu`` tests run both GPU backends on CUDA tensors.
"""
import importlib.util

import pytest
import torch

import armodel_fast as af
from armodel_fast import dispatch
from armodel_fast.ops import masked_linear as ml_ops

HAS_TRITON_HERE = dispatch._why_not("triton", "made", torch.device("cpu")) is None
triton_here = pytest.mark.skipif(not HAS_TRITON_HERE, reason=f"triton cannot run here:\n{af.explain('made')}")


def models(D, hidden, backend, dtype=torch.float64, seed=0, device="cpu", **kw):
    """(reference model, fast model) with equal, spread-out parameters."""
    ref = af.MADE(D, hidden, seed=seed, dtype=dtype, **kw)
    with torch.no_grad():
        scale = 0.25 if kw.get("out") == "gaussian" else 0.6
        for p in ref.parameters():
            p.normal_(0, scale, generator=torch.Generator().manual_seed(seed + p.numel()))
    fast = af.MADE(D, hidden, seed=seed, dtype=dtype, backend=backend, device=device, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def uniforms(model, n, seed=3):
    return torch.rand(model.uniforms_shape(n), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def check_same_samples(ref, fast, n, ctx=None):
    u = uniforms(ref, n)
    xr, lr = ref.sample(n, u=u, context=ctx, return_log_prob=True)
    dev = fast.device
    xf, lf = fast.sample(n, u=u.to(dev, fast.dtype), context=None if ctx is None else ctx.to(dev, fast.dtype),
                         return_log_prob=True)
    assert fast.last_backend == fast.backend
    if ref.out == "gaussian":
        torch.testing.assert_close(xf.cpu(), xr)
    else:
        assert torch.equal(xf.cpu(), xr)
    torch.testing.assert_close(lf.cpu(), lr)


@pytest.fixture
def small_blocks(monkeypatch):
    """16 samples per program and at most 2 programs: several chunks per program, padded rows."""
    from armodel_fast.kernels import made_sample_triton as mst
    real = mst.launch_config
    monkeypatch.setattr(mst, "launch_config", lambda n, K, dtype, block_s=None: real(n, K, dtype, 16))
    monkeypatch.setattr(mst, "MAX_PROGRAMS", 2)


@triton_here
@pytest.mark.parametrize("out, K", [("bernoulli", None), ("categorical", 3), ("gaussian", 2)])
def test_wide_runs_long_prefixes_many_chunks(small_blocks, out, K):
    # D=5 and 150 / 140 hidden units: runs of ~37 units (> BLOCK_U=16), prefixes of up to
    # 150 units (> BLOCK_J=128 under the interpreter); 37 samples = 3 chunks on 2 programs.
    ref, fast = models(5, [150, 140], "triton", out=out, K=K, direct=True, context_dim=2, order="random")
    ctx = torch.randn(37, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    check_same_samples(ref, fast, 37, ctx)


@triton_here
def test_many_classes():
    ref, fast = models(4, [30], "triton", out="categorical", K=20, direct=True)  # BLOCK_K = 32
    check_same_samples(ref, fast, 9)


@triton_here
def test_reads_only_the_reachable_prefix(monkeypatch):
    """NaN in every masked-out entry of the sorted weights changes nothing: the kernel never loads them."""
    real = ml_ops.prepare_triton  # the triton sampler's prepare launcher

    def poisoned(weight, in_degrees, out_degrees, strict):
        p = real(weight, in_degrees, out_degrees, strict)
        dout, din = p.out_sorted.long()[:, None], p.in_sorted.long()[None, :]
        mask = dout > din if strict else dout >= din
        return p._replace(w_sorted=torch.where(mask, p.w_sorted, torch.nan))

    monkeypatch.setitem(dispatch._TABLE[("made_sample", "prepare")], "triton", dispatch.Launcher(poisoned))
    for out, K in (("bernoulli", None), ("categorical", 3), ("gaussian", 2)):
        ref, fast = models(6, [20, 15], "triton", out=out, K=K, direct=True, order="random")
        check_same_samples(ref, fast, 7)
    ref, fast = models(6, [20, 15], "triton", out="gaussian", direct=True)  # the flow inverse
    z = torch.randn(5, 6, dtype=torch.float64)
    for a, b in zip(fast.inverse(z), ref.inverse(z)):
        torch.testing.assert_close(a, b)


@triton_here
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights(dtype):
    """Low-precision weights, fp32 inside: the fp32 reference with the same (rounded) weights draws
    the same samples except where u ties p to fp32 rounding."""
    _, fast = models(12, [24, 20], "triton", dtype=dtype, direct=True)
    ref = af.MADE(12, [24, 20], seed=0, direct=True, dtype=torch.float32)
    ref.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in fast.state_dict().items()})
    u = uniforms(ref, 40).float()
    xr, lr = ref.sample(40, u=u, return_log_prob=True)
    xf, lf = fast.sample(40, u=u.to(dtype), return_log_prob=True)
    assert xf.dtype == dtype and lf.dtype == dtype
    ur = u.to(dtype).float()  # the kernel sees the rounded uniforms
    xr, lr = ref.sample(40, u=ur, return_log_prob=True)
    same = (xf.float() == xr).all(1)
    p = torch.sigmoid(ref(xr))
    for s in torch.nonzero(~same).flatten().tolist():
        first = next(d for d in ref.order.tolist() if xr[s, d] != xf[s, d])
        assert abs(ur[s, first] - p[s, first]) < 1e-4
    assert same.sum() >= 35
    torch.testing.assert_close(lf[same].float(), lr[same], rtol=2e-2, atol=2e-2)


# ---- on a GPU: both one-launch samplers -------------------------------------------

GPU_BACKENDS = ["triton", "cuda"]


def _need_gpu_backend(backend):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: torch.cuda.is_available() is False")
    why = dispatch._why_not(backend, "made", torch.device("cuda"))
    assert why is None, f"a CUDA GPU is here but backend {backend!r} cannot run MADE: {why}"


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("out, K", [("bernoulli", None), ("categorical", 4), ("gaussian", 3)])
def test_gpu_sampler_matches_reference_fp64(backend, out, K):
    _need_gpu_backend(backend)
    ref, fast = models(9, [40, 33], backend, out=out, K=K, direct=True, context_dim=2, order="random",
                       num_masks=2, device="cuda")
    ctx = torch.randn(45, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for _ in range(2):
        check_same_samples(ref, fast, 45, ctx)
        ref.next_mask()
        fast.next_mask()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_sampler_d784_matches_cpu_sampler(backend):
    """D=784, hidden [500, 500], fp32: the GPU sampler and the C++ one draw the same samples
    except at fp32 ties (first differing step has u within 1e-4 of p)."""
    _need_gpu_backend(backend)
    cpu, gpu = models(784, [500, 500], "cpp" if "cpp" in af.backends() else "reference", dtype=torch.float32)
    gpu = gpu.set_backend(backend).cuda()
    u = uniforms(cpu, 64).float()
    xc = cpu.sample(64, u=u)
    xg, lg = gpu.sample(64, u=u.cuda(), return_log_prob=True)
    xg = xg.cpu()
    p = torch.sigmoid(cpu(xg))
    for s in torch.nonzero((xc != xg).any(1)).flatten().tolist():
        first = next(d for d in cpu.order.tolist() if xc[s, d] != xg[s, d])
        assert abs(u[s, first] - p[s, first]) < 1e-4
    torch.testing.assert_close(lg.cpu(), cpu.log_prob(xg), rtol=1e-4, atol=1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_flow_inverse(backend):
    _need_gpu_backend(backend)
    ref, fast = models(10, [30, 30], backend, out="gaussian", direct=True, context_dim=3, device="cuda")
    z = torch.randn(17, 10, dtype=torch.float64)
    ctx = torch.randn(17, 3, dtype=torch.float64)
    xr, ldr = ref.inverse(z, ctx)
    xf, ldf = fast.inverse(z.cuda(), ctx.cuda())
    torch.testing.assert_close(xf.cpu(), xr)
    torch.testing.assert_close(ldf.cpu(), ldr)


def test_gpu_backends_are_registered_for_made():
    """Triton (when installed) and the CUDA extension (when built with made_sample) offer MADE and FVSBN."""
    for op in ("made", "fvsbn"):
        ops_of = {name: st.ops for name, st in af.backends().items()}
        if importlib.util.find_spec("triton") is not None:
            assert op in ops_of["triton"]
        from armodel_fast import _ext
        cuda_ext = _ext.get_cuda_ext()
        assert (op in ops_of["cuda"]) == (cuda_ext is not None and hasattr(cuda_ext, "made_sample"))


@triton_here
def test_launcher_names_bad_operands():
    from armodel_fast.kernels import made_sample_triton as mst
    D = 4
    w0, w1 = torch.randn(6, D), torch.randn(D, 6)
    b0, b1 = torch.zeros(6), torch.zeros(D)
    deg = torch.tensor([1, 1, 2, 2, 3, 3])
    order, u = torch.arange(D), torch.rand(3, D)
    args = ([w0, w1], [b0, b1], [deg], None, order, None, None, u, "bernoulli", 1, 1)
    x, lp = mst.made_sample(*args)
    assert x.shape == (3, D) and lp.shape == (3,)
    with pytest.raises(ValueError, match="direct"):
        mst.made_sample([w0, w1], [b0, b1], [deg], torch.zeros(D, D + 1), *args[4:])
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        mst.made_sample([w0, torch.randn(D, 5)], *args[1:])
    with pytest.raises(ValueError, match=r"biases\[0\]"):
        mst.made_sample([w0, w1], [torch.zeros(5), b1], *args[2:])
    with pytest.raises(ValueError, match="z"):
        mst.made_sample([w0, torch.randn(3 * D, 6)], [b0, torch.zeros(3 * D)], [deg], None, order, None, None,
                        torch.rand(3, D, 2), "gaussian", 1, 1)
