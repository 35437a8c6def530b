"""masked_linear: one masked layer of a MADE, fwd and fwd+bwd (pytest-benchmark).

Cases: ``armodel_fast/bench/cases_masked_linear.py`` (the same rows as
``armodel-fast bench --family masked_linear``); options in ``conftest.py``.

    pytest benchmarks/bench_masked_linear.py [--bench-sweep]
"""
FAMILIES = ("masked_linear",)


def test_masked_linear(row, run_row):
    run_row(row)
