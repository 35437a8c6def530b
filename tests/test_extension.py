"""The C++ extension compiled, loads, and its argument checks raise the right errors."""

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from armodel_fast import _ext

EXT_DISABLED = os.environ.get("ARMODEL_FAST_NO_EXT") == "1"
FIX = "pip install --no-build-isolation -e ."


@pytest.fixture(scope="module")
def ext():
    if EXT_DISABLED:
        pytest.skip("armodel_fast._C disabled by ARMODEL_FAST_NO_EXT=1")
    mod = _ext.get_ext()
    if mod is None:
        pytest.fail(f"armodel_fast._C did not load: {_ext.ext_error()}")
    return mod


def test_extension_loads(ext):
    assert ext.__name__ == "armodel_fast._C"
    assert _ext.ext_error() is None


def test_build_info(ext):
    info = ext.build_info()
    assert set(info) >= {"openmp", "num_threads", "compiler", "simd"}
    assert info["openmp"] is True
    assert isinstance(info["num_threads"], int) and info["num_threads"] >= 1
    assert isinstance(info["compiler"], str) and info["compiler"]
    assert info["simd"] in {"avx512f", "avx2", "avx", "sse4.2", "sse2", "neon", "none"}


@pytest.mark.parametrize("D", [0, 1, 7, 784])
def test_check_order_accepts_permutations(ext, D):
    assert ext.check_order(torch.randperm(D), D) is None
    assert ext.check_order(torch.arange(D), D) is None
    assert ext.check_order(torch.arange(D).flip(0), D) is None


@pytest.mark.parametrize(
    "order, D",
    [
        ([0, 0, 2], 3),  # repeated value
        ([0, 1, 3], 3),  # out of range
        ([-1, 0, 1], 3),  # negative
        ([0, 1, 2], 4),  # wrong length
        ([[0, 1], [1, 0]], 2),  # not 1-D
    ],
)
def test_check_order_rejects_non_permutations(ext, order, D):
    with pytest.raises(ValueError, match="order"):
        ext.check_order(torch.tensor(order, dtype=torch.long), D)


def test_check_order_rejects_non_contiguous_duplicate(ext):
    # a strided view must be read through its strides, not its storage
    order = torch.tensor([0, 9, 0, 9, 1, 9])[::2]  # [0, 0, 1]
    with pytest.raises(ValueError, match="order"):
        ext.check_order(order, 3)
    assert ext.check_order(torch.tensor([2, 9, 0, 9, 1, 9])[::2], 3) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32, torch.bool])
def test_check_order_rejects_wrong_dtype(ext, dtype):
    with pytest.raises(TypeError, match="order"):
        ext.check_order(torch.arange(3).to(dtype), 3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-2, max_value=8), max_size=8))
def test_check_order_matches_definition(ext, values):
    D = len(values)
    order = torch.tensor(values, dtype=torch.long)
    if sorted(values) == list(range(D)):
        ext.check_order(order, D)
    else:
        with pytest.raises(ValueError, match="order"):
            ext.check_order(order, D)


def test_torch_version_mismatch_is_reported(monkeypatch):
    monkeypatch.setattr(_ext, "_build_record", lambda: ("1.0.0", {}))
    with pytest.warns(RuntimeWarning, match="built against torch 1.0.0"):
        mod, reason = _ext._load("_C")
    assert mod is None
    assert "built against torch 1.0.0" in reason
    assert f"running torch {torch.__version__}" in reason
    assert FIX in reason


def test_build_record_matches_running_torch(ext):
    built, not_built = _ext._build_record()
    assert built == torch.__version__
    assert "_C" not in not_built


def test_not_built_reason_is_reported(monkeypatch):
    monkeypatch.setattr(_ext, "_build_record", lambda: (torch.__version__, {"_C_cuda": "torch has no CUDA"}))
    mod, reason = _ext._load("_C_cuda")
    assert mod is None
    assert "torch has no CUDA" in reason and FIX in reason


def test_disabled_by_env(monkeypatch):
    monkeypatch.setenv("ARMODEL_FAST_NO_EXT", "1")
    for name in ("_C", "_C_cuda"):
        mod, reason = _ext._load(name)
        assert mod is None
        assert "disabled by ARMODEL_FAST_NO_EXT=1" in reason and FIX in reason


def test_cuda_ext_gives_a_reason_when_missing():
    if _ext.get_cuda_ext() is None:
        reason = _ext.cuda_ext_error()
        assert isinstance(reason, str) and "_C_cuda" in reason
    else:
        assert _ext.cuda_ext_error() is None
