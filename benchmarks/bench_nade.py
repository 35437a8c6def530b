"""Binary NADE on the CPU: the C++ kernels against the two reference forms.

B=256, D=784, H=500 (binarized-MNIST sized), fp32, parameters initialised as
``armodel_fast.nn.NADE`` does, x ~ Bernoulli(0.5) (half the steps update the
hidden state; binarized MNIST has ~13% ones, which is cheaper for the kernel):

* ``fwd``: log p(x) without grad;
* ``fwd+bwd``: log p(x) and the gradient of its mean w.r.t. W, c, V, b;
* ``sample``: B samples from given uniforms.

Providers: ``loop`` (``reference.nade`` step loop, O(BH) memory), ``cumsum``
(vectorised reference, materialises [B, D, H]; no sampler, so ``sample`` has
loop and cpp only) and ``cpp`` (``armodel_fast.ops.nade``, backend="cpp").

    pytest benchmarks/bench_nade.py          # pytest-benchmark
    python benchmarks/bench_nade.py          # ratio table (min of interleaved calls)
    python benchmarks/bench_nade.py --isa-sweep   # cpp rows with the baseline / AVX2 / AVX-512
                                                  # loops (ARMODEL_FAST_ISA): shows they vectorise
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import time

import pytest
import torch

from armodel_fast import _ext
from armodel_fast.reference import nade as ref

B, D, H = 256, 784, 500
PROVIDERS = ("loop", "cumsum", "cpp")
MODES = ("fwd", "fwd+bwd", "sample")


def setup(p_one: float = 0.5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = (torch.rand(H, D, generator=g) * 2 - 1) / math.sqrt(D)
    V = (torch.rand(D, H, generator=g) * 2 - 1) / math.sqrt(H)
    c, b = torch.zeros(H), torch.zeros(D)
    order = torch.randperm(D, generator=g)
    x = (torch.rand(B, D, generator=g) < p_one).float()
    u = torch.rand(B, D, generator=g)
    return [t.requires_grad_() for t in (W, c, V, b)], order, x, u


def make_fns(p_one: float = 0.5) -> dict:
    """{(mode, provider): callable} for every pair that exists."""
    from armodel_fast.ops import nade as ops

    params, order, x, u = setup(p_one)

    def log_prob(provider):
        if provider == "cpp":
            return lambda: ops.nade_log_prob(x, *params, order, backend="cpp")
        return lambda: ref.nade_log_prob(x, *params, order, form=provider)

    def fwd(f):
        def run():
            with torch.no_grad():
                return f()
        return run

    def fwd_bwd(f):
        def run():
            for p in params:
                p.grad = None
            f().mean().backward()
        return run

    fns = {}
    for prov in PROVIDERS:
        fns[("fwd", prov)] = fwd(log_prob(prov))
        fns[("fwd+bwd", prov)] = fwd_bwd(log_prob(prov))
    detached = [p.detach() for p in params]
    fns[("sample", "loop")] = fwd(lambda: ref.nade_sample(*detached, order, u))
    fns[("sample", "cpp")] = lambda: ops.nade_sample(*detached, order, u, backend="cpp")
    return fns


needs_cpp = pytest.mark.skipif(_ext.get_ext() is None or not hasattr(_ext.get_ext(), "nade_forward"),
                               reason="armodel_fast._C with the NADE kernels is not built")


@needs_cpp
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
def test_nade(benchmark, mode, provider):
    fns = make_fns()
    if (mode, provider) not in fns:
        pytest.skip(f"{provider} has no {mode}")
    benchmark.group = f"NADE {mode} B={B} D={D} H={H}"
    benchmark(fns[(mode, provider)])


def best_ms(fns: dict, repeats: int) -> dict:
    """Minimum time (ms) of each callable; calls interleaved so background load hits all alike."""
    times = {k: float("inf") for k in fns}
    for f in fns.values():
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k] = min(times[k], (time.perf_counter() - t) * 1e3)
    return times


def isa_sweep(args):
    """cpp rows once per SIMD variant, each in a fresh process (the variant is chosen at first use)."""
    print(f"{'kernels':<9}" + "".join(f"{m:>11}" for m in MODES))
    for isa in ("base", "avx2", "avx512"):
        cmd = [sys.executable, __file__, "--cpp-only", "--repeats", str(args.repeats), "--p-one", str(args.p_one)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        res = subprocess.run(cmd, env=dict(os.environ, ARMODEL_FAST_ISA=isa), capture_output=True, text=True)
        if res.returncode != 0:
            print(f"{isa:<9} failed: {res.stderr.strip().splitlines()[-1:]}")
            continue
        print(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--p-one", type=float, default=0.5, help="fraction of ones in x (default 0.5)")
    ap.add_argument("--isa-sweep", action="store_true", help="time the cpp rows for each SIMD variant")
    ap.add_argument("--cpp-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.isa_sweep:
        return isa_sweep(args)
    if args.cpp_only:
        t = best_ms({k: f for k, f in make_fns(args.p_one).items() if k[1] == "cpp"}, args.repeats)
        print(f"{_ext.get_ext().nade_cpu_isa():<9}" + "".join(f"{t[(m, 'cpp')]:>8.1f} ms" for m in MODES))
        return
    isa = _ext.get_ext().nade_cpu_isa() if _ext.get_ext() is not None else "n/a"
    print(f"NADE B={B} D={D} H={H} fp32, x ones {args.p_one:.2f}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, kernels: {isa}")
    t = best_ms(make_fns(args.p_one), args.repeats)
    print(f"{'mode':<9}" + "".join(f"{p:>11}" for p in PROVIDERS) + "   loop/cpp  cumsum/cpp")
    for mode in MODES:
        row = [t.get((mode, p)) for p in PROVIDERS]
        cells = "".join(f"{v:>8.1f} ms" if v is not None else f"{'-':>11}" for v in row)
        cpp = t[(mode, "cpp")]
        ratios = f"{t[(mode, 'loop')] / cpp:>9.1f}x"
        ratios += f"{t[(mode, 'cumsum')] / cpp:>11.1f}x" if (mode, "cumsum") in t else f"{'-':>12}"
        print(f"{mode:<9}{cells}  {ratios}")


if __name__ == "__main__":
    main()
