"""backends() reports every backend and why not; explicit unavailable backends raise."""
import pytest
import torch

import armodel_fast as af
from armodel_fast import _backend


def test_backends_report():
    status = af.backends()
    assert set(status) == {"reference", "cpp", "triton", "cuda"}
    assert status["reference"].available
    for s in status.values():
        assert isinstance(s.reason, str) and s.reason
    if not torch.cuda.is_available():
        assert not status["cuda"].available


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="backend"):
        af.NADE(4, 3, backend="fortran")
    with pytest.raises(TypeError, match="backend"):
        af.NADE(4, 3, backend=None)


def test_explicit_backend_without_kernel_raises(monkeypatch):
    monkeypatch.setattr(_backend, "_KERNELS", {})
    for name in ("cpp", "triton", "cuda"):
        with pytest.raises(af.BackendUnavailableError, match=name):
            af.NADE(4, 3, backend=name)
        with pytest.raises(af.BackendUnavailableError):
            af.ARRNN(4, 3, backend=name)


def test_auto_says_which_backend_ran(monkeypatch):
    monkeypatch.setattr(_backend, "_KERNELS", {})
    model = af.NADE(4, 3, backend="auto")
    assert model.last_backend is None
    model.log_prob(torch.zeros(2, 4))
    assert model.last_backend == "reference"
    assert "cpp: no" in af.explain("nade")


def test_reference_backend_never_unavailable():
    assert _backend.resolve_backend("reference", "anything", torch.device("cpu")) == "reference"
