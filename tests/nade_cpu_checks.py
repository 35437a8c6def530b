"""Shared by the C++ CPU NADE kernel tests (test_nade_kernels_cpu.py: binary;
test_nade_variants_cpu.py: categorical, RNADE): the extension handle, skip marks
and the tolerances.

Tolerances (fp32; sums of D terms scale with D):
  per-step outputs (logits, mixture params)  rtol 1e-5, atol 1e-5
  log p(x)                                    rtol 1e-5, atol 2e-6 * D
  gradients                                   rtol 1e-4, atol 1e-5 * max|reference gradient|
fp64 uses rtol 1e-10 and atol 1e-10 (1e-9 * D for log p).
"""
from __future__ import annotations

import pytest
import torch

from armodel_fast import _ext

EXT = _ext.get_ext()
HAS_BINARY = EXT is not None and hasattr(EXT, "nade_forward")
needs_binary = pytest.mark.skipif(not HAS_BINARY, reason=f"armodel_fast._C without NADE kernels: {_ext.ext_error()}")
HAS_VARIANTS = HAS_BINARY  # nade_forward(kind, ...) runs every variant
needs_variants = pytest.mark.skipif(not HAS_VARIANTS, reason="armodel_fast._C without categorical NADE / RNADE")

TIE = 1e-5  # samples: rows where some u lies this close to the reference's probability are left out


def tol(dtype, D):
    """(per-step, log p) tolerances."""
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-10), dict(rtol=1e-10, atol=1e-9 * D)
    return dict(rtol=1e-5, atol=1e-5), dict(rtol=1e-5, atol=2e-6 * D)


def close_grads(got, want, names, dtype):
    for g, w, name in zip(got, want, names):
        w = torch.zeros_like(g) if w is None else w
        scale = float(w.abs().max()) if w.numel() else 1.0
        atol = (1e-10 if dtype == torch.float64 else 1e-5) * max(scale, 1e-3)
        rtol = 1e-10 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol, msg=lambda m: f"d{name}: {m}")
