"""Checks that only make sense against an installed wheel (`make test-wheels` sets the env)."""
import os
from importlib import metadata
from pathlib import Path

import pytest
import torch

import armodel_fast as af
from armodel_fast import _ext

pytestmark = pytest.mark.skipif(os.environ.get("ARMODEL_FAST_EXPECT_INSTALLED") != "1",
                                reason="runs only against an installed wheel (make test-wheels)")

REPO = Path(__file__).resolve().parents[1]


def test_imported_from_site_packages_not_the_source_tree():
    here = Path(af.__file__).resolve().parent
    assert here != REPO / "armodel_fast" and "site-packages" in here.parts, af.__file__


def test_metadata_pins_the_build_torch():
    requires = metadata.requires("armodel-fast")
    pins = [r for r in requires if r.replace(" ", "").startswith("torch==")]
    assert pins == [f"torch=={torch.__version__.split('+')[0]}"], requires


def test_compiled_extensions_are_reported():
    assert _ext.get_ext() is not None, _ext.ext_error()
    status = af.backends()
    assert status["cpp"].available
    if os.environ.get("ARMODEL_FAST_EXPECT_CUDA_EXT") == "1":
        assert _ext.get_cuda_ext() is not None, _ext.cuda_ext_error()
        if not torch.cuda.is_available():
            assert not status["cuda"].available
            assert "no CUDA GPU" in status["cuda"].reason
    else:
        assert _ext.get_cuda_ext() is None
