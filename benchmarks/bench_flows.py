"""A 5-layer MAF in zuko, nflows and pyro against the same flow from armodel_fast.flows
(pytest-benchmark): training step (B=256), sampling n points without gradients,
differentiable sampling; peers skipped where missing or where their D-pass
sampling would run for many minutes on a CPU.

Cases: ``armodel_fast/bench/cases_flows.py`` (the rows of ``armodel-fast bench
--family flows``); options in ``conftest.py``.

    pytest benchmarks/bench_flows.py [--bench-quick]
"""
FAMILIES = ("flows",)


def test_flows(row, run_row):
    run_row(row)
