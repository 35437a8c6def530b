"""masked_linear against the dense masked form and an unmasked nn.Linear (CPU).

Layers of a MADE at D=784 (batch 128): the input layer 784 -> H and a hidden
layer H -> H, H in {500, 2000}, with MADE's degrees (about half the weights
masked). Providers:

* ``masked_linear``: the fast backend (staircase blocks over degree-sorted units);
* ``dense_masked``:  ``F.linear(x, W * M, b)`` with a stored mask (what MADE code does);
* ``unmasked``:      ``F.linear(x, W, b)`` (an ordinary nn.Linear, the cost of no mask).

Modes: ``fwd`` (evaluation, no grad: the sorted masked weights stay cached) and
``fwd+bwd`` (training: the weight is updated in place before every call, so the
fast backend rebuilds its sorted weights each time, as in a real training step).

    pytest benchmarks/bench_masked_linear.py            # pytest-benchmark
    python benchmarks/bench_masked_linear.py [--repeats N]   # ratio table
"""
from __future__ import annotations

import argparse
import time

import pytest
import torch
import torch.nn.functional as F

from armodel_fast.ops.masked_linear import masked_linear
from armodel_fast.reference import made as ref_made
from armodel_fast.reference.masked_linear import degree_mask

B, D = 128, 784
PROVIDERS = ("masked_linear", "dense_masked", "unmasked")
LAYERS = ("input", "hidden")
MODES = ("fwd", "fwd+bwd")


def setup(H: int, layer: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    m0 = ref_made.input_degrees(torch.randperm(D, generator=g))
    m1, m2 = ref_made.hidden_degrees(m0, [H, H], g)
    din, dout = (m0, m1) if layer == "input" else (m1, m2)
    w = (torch.randn(dout.numel(), din.numel(), generator=g) / din.numel() ** 0.5).requires_grad_(True)
    b = torch.zeros(dout.numel(), requires_grad=True)
    x = torch.randn(B, din.numel(), generator=g)
    return x, w, b, din, dout


def make(provider: str, H: int, layer: str, mode: str):
    """A zero-argument callable running one call of ``provider``."""
    x, w, b, din, dout = setup(H, layer)
    mask = degree_mask(din, dout, False)
    fns = {
        "masked_linear": lambda: masked_linear(x, w, b, din, dout, False, "relu", backend="cpp"),
        "dense_masked": lambda: F.relu(F.linear(x, w * mask, b)),
        "unmasked": lambda: F.relu(F.linear(x, w, b)),
    }
    fn = fns[provider]
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn()
        return run

    def step():
        with torch.no_grad():
            w.mul_(1.0)  # stands for the optimizer step: a new weight version every call
        w.grad = b.grad = None
        fn().sum().backward()
    return step


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("H", [500, 2000])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_masked_linear(benchmark, provider, H, layer, mode):
    benchmark.group = f"masked_linear H={H} {layer} {mode}"
    benchmark(make(provider, H, layer, mode))


def best_ms(fns: dict, repeats: int) -> dict:
    """Minimum time (ms) of each callable, calls interleaved so background load hits all alike."""
    for f in fns.values():
        f()
    times = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k] = min(times[k], (time.perf_counter() - t) * 1e3)
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"masked_linear, B={B}, D={D}, torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(min of {args.repeats} interleaved calls)")
    print(f"{'H':>5} {'layer':>7} {'mode':>8} | " + " ".join(f"{p:>14}" for p in PROVIDERS)
          + " | vs dense_masked  vs unmasked")
    for H in (500, 2000):
        for layer in LAYERS:
            for mode in MODES:
                t = best_ms({p: make(p, H, layer, mode) for p in PROVIDERS}, args.repeats)
                fast = t["masked_linear"]
                print(f"{H:>5} {layer:>7} {mode:>8} | " + " ".join(f"{t[p]:>11.2f} ms" for p in PROVIDERS)
                      + f" | {t['dense_masked'] / fast:>13.2f}x {t['unmasked'] / fast:>10.2f}x")


if __name__ == "__main__":
    main()
