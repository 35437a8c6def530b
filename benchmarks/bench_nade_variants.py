"""Categorical NADE and RNADE: the C++ kernels against the reference step loop (pytest-benchmark).

Digits-sized headline shapes (``armodel_fast.bench.rows_variants.SIZES``): B=256,
D=64, H=500, K=17 grey levels for the categorical NADE, K=10 components for RNADE;
fp32, parameters as the modules initialise them. Modes ``fwd`` (log p(x), no grad),
``fwd+bwd`` (and the gradient of its sum), ``sample`` (B samples from given uniforms).
The same callables feed the ``armodel-fast bench`` rows, which print the ratios.

    pytest benchmarks/bench_nade_variants.py
"""
from __future__ import annotations

import pytest
import torch

from armodel_fast import _backend
from armodel_fast.bench.core import BenchConfig
from armodel_fast.bench.rows_variants import SIZES, _maker

MODELS = ("categorical_nade", "rnade")
MODES = ("fwd", "fwd+bwd", "sample")
PROVIDERS = ("reference", "cpp")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", MODELS)
def test_variant(benchmark, model, mode, provider):
    if provider != "reference":
        why = _backend._why_not(provider, model, torch.device("cpu"))
        if why is not None:
            pytest.skip(why)
    size = SIZES[model]["headline"][0]
    run = _maker(size, model, provider, mode)(BenchConfig(device="cpu"))
    benchmark.group = f"{model} {mode} {size}"
    run()  # warm-up
    benchmark.pedantic(run, rounds=3 if provider == "reference" else 10, iterations=1)
