"""NADE, categorical NADE and RNADE: log-prob fwd, fwd+bwd and sampling (pytest-benchmark).

Cases: ``armodel_fast/bench/cases_nade.py`` and ``cases_nade_variants.py`` (the
same rows as ``armodel-fast bench --family nade --family categorical_nade
--family rnade``, which also prints the ratios); options in ``conftest.py``.

    pytest benchmarks/bench_nade.py
    ARMODEL_FAST_ISA=avx2 pytest benchmarks/bench_nade.py -k cpp   # one SIMD variant of the C++ loops
"""
FAMILIES = ("nade", "categorical_nade", "rnade")


def test_nade(row, run_row):
    run_row(row)
