"""Compile every Triton kernel ahead of time for sm_90 (H100), with no GPU.

The interpreter (TRITON_INTERPRET=1, which the other tests use) executes the
kernels with numpy and accepts things the real compiler rejects: block shapes
that are not powers of 2, mixed dtypes in ``tl.where``/stores, ops without a
GPU lowering, scalar/tensor type mismatches in loops. So each kernel is also
lowered through the whole NVIDIA pipeline (ttir, ttgir, llir, ptx, cubin via
the bundled ptxas) with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``
(Triton 3.8 API; no driver is touched when a target is given).

The interpreter replaces ``@triton.jit`` functions when it is on, so the
compilation runs in a subprocess with TRITON_INTERPRET unset: this file run as
a script compiles everything and prints one JSON line per kernel.

Kernel signatures follow a naming convention (see ``_signature``): pointer
arguments are fp32 buffers (outputs, uniforms, upstream gradients, scratch),
int64 (``order_ptr``, the categorical ``x_ptr``) or the parameter dtype under
test; other non-constexpr arguments are i32 sizes. Each kernel compiles for
fp32 at a large GPU configuration (B=1024, H=500, K=10) and for bf16 at the
smallest one (B=1, H=3, K=1: BLOCK_B=1); the NADE backward kernels with their
output-gradient path (HAS_GOUT) on in the fp32 case and off in the bf16 one.

The masked-linear kernels (``masked_linear_triton``, see ``_ml_jobs``) are tile
matmuls: each compiles for fp32 and bf16 at the launcher's configuration for a
large layer (128 x 128 x 32 bf16 tiles, 8 warps) and a small one (16 x 32
tiles, 4 warps, tile counters on), and for fp64 and fp32 "tf32x3" at the large one.
The one-launch MADE sampler (``made_sample_triton``, ``_made_jobs``) compiles for
each head in fp32, and with bf16 and fp64 weights.
"""
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time

import pytest

MODULES = ["nade_triton", "categorical_nade_triton", "rnade_triton", "masked_linear_triton", "made_sample_triton"]
FP32_PTRS = {"logp_ptr", "logits_ptr", "params_ptr", "grad_ptr", "gout_ptr", "u_ptr", "scratch_ptr",
             "dwt_ptr", "dc_ptr", "dv_ptr", "db_ptr", "dx_ptr"}
INT64_PTRS = {"order_ptr"}
MODULE_PTRS = {"categorical_nade_triton": {"x_ptr": "*i64"}}
CASES = [("fp32", (1024, 500, 10)), ("bf16", (1, 3, 1))]
ML_MODULE = "masked_linear_triton"
MADE_MODULE = "made_sample_triton"
# (weight dtype, head, samples, K) of the one-launch MADE sampler
MADE_CASES = [("fp32", "bernoulli", 16, 1), ("fp32", "categorical", 4096, 10), ("fp32", "gaussian", 64, 5),
              ("fp32", "affine", 10000, 1), ("bf16", "bernoulli", 16, 1), ("fp64", "gaussian", 16, 3)]
ML_PTRS = {"in_deg_ptr": "*i32", "out_deg_ptr": "*i32", "reach_ptr": "*i32", "col_start_ptr": "*i32",
           "count_ptr": "*i32"}
# (dtype, (B, N, K) of the layer the launcher sizes blocks for, fp32 dot precision)
ML_CASES = [("fp32", (4096, 2048, 2048), "ieee"), ("bf16", (4096, 2048, 2048), "ieee"),
            ("fp32", (16, 64, 64), "ieee"), ("bf16", (16, 64, 64), "ieee"),
            ("fp64", (4096, 2048, 2048), "ieee"), ("fp32", (4096, 2048, 2048), "tf32x3")]


def _kernels():
    """(module name, kernel name, JITFunction) for every ``*_kernel`` in the kernel modules."""
    import importlib

    import triton
    out = []
    for mod in MODULES:
        try:
            m = importlib.import_module(f"armodel_fast.kernels.{mod}")
        except ModuleNotFoundError:
            continue
        for name, fn in sorted(vars(m).items()):
            if name.endswith("_kernel") and isinstance(fn, triton.runtime.jit.JITFunction):
                out.append((mod, name, fn))
    return out


def _signature(mod, fn, dtype, cfg, sample=None):
    """``sample`` (the fused log-prob/sampling kernels' SAMPLE): in_ptr is x (False) or the
    fp32 uniforms (True), out_ptr the fp32 outputs (False) or the drawn x (True)."""
    x_type = MODULE_PTRS.get(mod, {}).get("x_ptr") or f"*{dtype}"
    io = {} if sample is None else {"in_ptr": "*fp32" if sample else x_type,
                                    "out_ptr": x_type if sample else "*fp32"}
    sig, consts = {}, {}
    for p in fn.params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
            consts[p.name] = cfg[p.name]
        elif p.name.endswith("_ptr"):
            sig[p.name] = io.get(p.name) or MODULE_PTRS.get(mod, {}).get(p.name) or (
                "*fp32" if p.name in FP32_PTRS else "*i64" if p.name in INT64_PTRS else f"*{dtype}")
        else:
            sig[p.name] = "i32"
    return sig, consts


def _nade_jobs():
    """Every NADE kernel at each of CASES; the fused log-prob/sampling kernels in both modes."""
    from armodel_fast.kernels.triton_common import launch_config
    for mod, name, fn in _kernels():
        if mod in (ML_MODULE, MADE_MODULE):
            continue
        modes = (False, True) if any(p.name == "SAMPLE" for p in fn.params) else (None,)
        for dtype, (B, H, K) in CASES:
            cfg = launch_config(B, H, K, heads=3 if mod == "rnade_triton" else 1)
            for sample in modes:
                values = dict(cfg, HAS_GOUT=dtype == "fp32", SAMPLE=sample)
                sig, consts = _signature(mod, fn, dtype, values, sample)
                label = dtype + ("-sample" if sample else "")
                yield f"{mod}.{name}", fn, label, cfg, sig, consts


def _ml_jobs():
    """Every masked-linear kernel at each of ML_CASES, blocks from the launcher's heuristic."""
    import torch
    import triton.language as tl

    from armodel_fast.kernels import masked_linear_triton as mlt
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}
    for mod, name, fn in _kernels():
        if mod != ML_MODULE:
            continue
        kind = name[len("_ml_"):-len("_kernel")]
        for dtype, (B, N, K), precision in ML_CASES:
            cfg = mlt.launch_config(kind, B, N, K, torch_dtype[dtype])
            small = B < 1024
            values = dict(STRICT=not small, ACT=2 if small else 3, HAS_BIAS=True, COUNT=small, STORE_G=True,
                          HAS_DB=True, ACC=tl.float64 if dtype == "fp64" else tl.float32, PRECISION=precision,
                          INTERP_BF16=False, **cfg)
            sig, consts = {}, {}
            for p in fn.params:
                if p.is_constexpr:
                    sig[p.name], consts[p.name] = "constexpr", values[p.name]
                elif p.name.endswith("_ptr"):
                    acc = "*fp64" if dtype == "fp64" else "*fp32"
                    sig[p.name] = ML_PTRS.get(p.name) or (acc if p.name == "dbp_ptr" else f"*{dtype}")
                else:
                    sig[p.name] = "i32"
            label = dtype if precision == "ieee" else f"{dtype}-{precision}"
            yield f"{mod}.{name}", fn, label, cfg, sig, consts


def _made_jobs():
    """The one-launch MADE sampler for every head (fp32), and in bf16 / fp64 weights."""
    import torch
    import triton.language as tl

    from armodel_fast.kernels import made_sample_triton as mst
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}
    for mod, name, fn in _kernels():
        if mod != MADE_MODULE:
            continue
        for dtype, head, n, K in MADE_CASES:
            acc = "fp64" if dtype == "fp64" else "fp32"
            cfg = mst.launch_config(n, K, torch_dtype[acc])
            values = dict(HEAD=mst.HEADS[head], ACT=1 if head != "gaussian" else 3, HAS_DIRECT=True,
                          HAS_CTX=head != "categorical", ACC=tl.float64 if acc == "fp64" else tl.float32, **cfg)
            ptrs = {"order_ptr": "*i64", "meta_ptr": "*i64", "ends_ptr": "*i32", "act_ptr": f"*{acc}",
                    "lp_ptr": f"*{acc}", "x_ptr": "*i64" if head == "categorical" else f"*{dtype}"}
            sig, consts = {}, {}
            for p in fn.params:
                if p.is_constexpr:
                    sig[p.name], consts[p.name] = "constexpr", values[p.name]
                elif p.name.endswith("_ptr"):
                    sig[p.name] = ptrs.get(p.name, f"*{dtype}")
                else:
                    sig[p.name] = "i32"
            yield f"{mod}.{name}", fn, f"{dtype}-{head}", cfg, sig, consts


def _compile_all():
    import itertools

    import triton
    from triton.backends.compiler import GPUTarget
    target = GPUTarget("cuda", 90, 32)
    for kernel, fn, dtype, cfg, sig, consts in itertools.chain(_nade_jobs(), _ml_jobs(), _made_jobs()):
        rec = {"kernel": kernel, "dtype": dtype, "config": cfg}
        t0 = time.time()
        log = io.StringIO()
        try:
            options = {k: cfg[k] for k in ("num_warps", "num_stages") if k in cfg}
            with contextlib.redirect_stdout(log):   # TRITON_DUMP_PTXAS_LOG: ptxas -v report
                k = triton.compile(triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts),
                                   target=target, options=options)
            rec.update(ok=len(k.asm["cubin"]) > 0, shared=k.metadata.shared)
            regs = re.search(r"Used (\d+) registers", log.getvalue())
            spills = re.search(r"(\d+) bytes spill stores", log.getvalue())
            if regs:  # only on a cache miss (a cached kernel runs no ptxas)
                rec.update(registers=int(regs.group(1)), spill_stores=int(spills.group(1)) if spills else 0)
        except Exception as e:  # report every failure, not just the first
            rec.update(ok=False, error=f"{type(e).__name__}: {e}"[-3000:])
        rec["seconds"] = round(time.time() - t0, 2)
        print(json.dumps(rec), flush=True)


@pytest.fixture(scope="module")
def aot_results():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                          timeout=600, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = [json.loads(s) for s in proc.stdout.splitlines() if s.startswith("{")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"AOT compile script failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    return lines


def test_every_kernel_compiles_for_sm90(aot_results):
    failed = [r for r in aot_results if not r["ok"]]
    assert not failed, "\n\n".join(f"{r['kernel']} [{r['dtype']}, {r['config']}]:\n{r.get('error')}"
                                   for r in failed)


def test_all_kernels_were_compiled(aot_results):
    names = {r["kernel"] for r in aot_results}
    for mod, prefix in (("nade_triton", "_nade"), ("categorical_nade_triton", "_cat_nade"),
                        ("rnade_triton", "_rnade")):
        for kind in ("fwd", "bwd"):
            assert f"{mod}.{prefix}_{kind}_kernel" in names
    ml = {n for n in names if n.startswith(ML_MODULE)}
    assert ml == {f"{ML_MODULE}._ml_{kind}_kernel" for kind in ("fwd", "dact", "dx", "dw")}
    made = {n for n in names if n.startswith(MADE_MODULE)}
    assert made == {f"{MADE_MODULE}._made_sample_kernel"}
    fused = {n for n in names if n.endswith("_fwd_kernel") and n not in ml}  # log-prob + sampling
    nade = names - ml - made
    assert len(aot_results) == (len(nade) * len(CASES) + len(fused) * len(CASES) + len(ml) * len(ML_CASES)
                                + len(made) * len(MADE_CASES))
    modes = {r["dtype"] for r in aot_results if r["kernel"] in fused}
    assert modes == {"fp32", "fp32-sample", "bf16", "bf16-sample"}
    for r in aot_results:
        if r["kernel"] in ml and r["dtype"] in ("fp32", "bf16") and r["config"].get("num_warps") == 8:
            assert r["config"]["BLOCK_K" if "dw" in r["kernel"] else "BLOCK_M"] >= 32  # realistic tiles


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    sys.path.insert(0, os.getcwd())
    _compile_all()
