"""MADE: forward, training step (fwd+bwd) and sampling (pytest-benchmark).

Cases: ``armodel_fast/bench/cases_made.py`` (the same rows as ``armodel-fast
bench --family made --family "made train" --family "made sample"``); options in ``conftest.py``. On a
machine with a CUDA GPU the rows run on it, the Triton and CUDA samplers included.

    pytest benchmarks/bench_made.py [--bench-sweep] [--bench-device cpu]
"""
FAMILIES = ("made", "made train", "made sample")


def test_made(row, run_row):
    run_row(row)
