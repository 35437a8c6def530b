"""A 5-layer MAF in zuko, nflows and pyro against the same flow from armodel_fast.flows
(pytest-benchmark). The cases are those of ``armodel-fast bench --family flows``
(``armodel_fast.bench.rows_flows``): training step (B=256), sampling n points
without gradients, differentiable sampling; peers skipped where missing or where
their D-pass sampling would run for many minutes on a CPU.

    pytest benchmarks/bench_flows.py
"""
from __future__ import annotations

import pytest

from armodel_fast.bench.core import BenchConfig
from armodel_fast.bench.rows_flows import LIBRARIES, SIZES, _maker, _peer_skip

WHAT = ("train step", "sample", "rsample")


@pytest.mark.parametrize("fast", [False, True], ids=["peer", "armodel_fast"])
@pytest.mark.parametrize("lib", LIBRARIES)
@pytest.mark.parametrize("what", WHAT)
@pytest.mark.parametrize("size", SIZES["flows"]["headline"], ids=lambda s: f"D{s['D']}-n{s['n']}")
def test_flow(benchmark, size, what, lib, fast):
    why = _peer_skip(lib, size, what)
    if why is not None and (not fast or "not installed" in why):
        pytest.skip(why)
    if what == "train step" and size["n"] > 16:
        pytest.skip("the training step does not depend on n: measured with the small n")
    run = _maker(lib, fast, size, what)(BenchConfig(device="cpu"))
    benchmark.group = f"MAF x5 {what} D={size['D']} n={size['n']}"
    run()  # warm-up
    benchmark.pedantic(run, rounds=3 if fast else 1, iterations=1)
