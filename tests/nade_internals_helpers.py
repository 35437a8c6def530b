"""Helpers of the NADE backend-internal tests (tests/test_nade_internals_*.py).

Part 1: the C++ CPU kernels' extension handle, skip marks and tolerances. Part 2: the
Triton kernels' device, tolerances and comparison helpers (without a GPU the kernels run
under the Triton interpreter, which tests/conftest.py switches on before triton is imported).
"""
from __future__ import annotations

import pytest
import torch

from armodel_fast import _ext

# ==== Part 1: C++ CPU kernels - tolerances and helpers ================================================
# Shared by the C++ CPU NADE kernel tests (the binary C++ section: binary;
# the categorical/RNADE C++ section: categorical, RNADE): the extension handle, skip marks
# and the tolerances.
#
# Tolerances (fp32; sums of D terms scale with D):
#   per-step outputs (logits, mixture params)  rtol 1e-5, atol 1e-5
#   log p(x)                                    rtol 1e-5, atol 2e-6 * D
#   gradients                                   rtol 1e-4, atol 1e-5 * max|reference gradient|
# fp64 uses rtol 1e-10 and atol 1e-10 (1e-9 * D for log p).


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


def check_log_prob_and_grads(ref_outputs, head_log_prob, op_log_prob, x, params, order, dtype, x_grad=False):
    """The op's per-step outputs, log p and gradients (of ``sum(gl * log p) + sum(g_out * outputs)``
    for random gl, g_out; w.r.t. W, c, V, b and, with ``x_grad``, x first) against the reference's
    step loop ``ref_outputs(x, W, c, V, b, order)`` and head ``head_log_prob(outputs, x)``."""
    B, D = x.shape
    leaves = [t.clone().requires_grad_() for t in ((x,) if x_grad else ()) + tuple(params)]
    ref_x = leaves[0] if x_grad else x
    ref_out = ref_outputs(ref_x, *leaves[int(x_grad):], order)
    ref_lp = head_log_prob(ref_out, ref_x).sum(-1)
    gl, g_out = torch.randn(B, dtype=dtype), torch.randn(ref_out.shape, dtype=dtype)
    want = torch.autograd.grad((ref_lp * gl).sum() + (ref_out * g_out).sum(), leaves, allow_unused=True)
    args = [t.clone().requires_grad_() for t in ((x,) if x_grad else ()) + tuple(params)]
    lp, out = op_log_prob(args[0] if x_grad else x, *args[int(x_grad):], order, return_logits=True)
    step_tol, lp_tol = tol(dtype, D)
    torch.testing.assert_close(out, ref_out.detach(), **step_tol)
    torch.testing.assert_close(lp, ref_lp.detach(), **lp_tol)
    got = torch.autograd.grad((lp * gl).sum() + (out * g_out).sum(), args, allow_unused=True)
    close_grads(got, want, (["x"] if x_grad else []) + "W c V b".split(), dtype)


def close_grads(got, want, names, dtype):
    """Gradients against the reference's; None (an unused input: W when D = 1) where it has None."""
    for g, w, name in zip(got, want, names):
        assert (g is None) == (w is None), f"d{name}: {g} where the reference gives {w}"
        if w is None:
            continue
        scale = float(w.abs().max()) if w.numel() else 1.0
        atol = (1e-10 if dtype == torch.float64 else 1e-5) * max(scale, 1e-3)
        rtol = 1e-10 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol, msg=lambda m: f"d{name}: {m}")


# ==== Part 2: Triton kernels - tolerances and helpers =================================================
# Shared by the Triton NADE kernel tests (the binary Triton section: binary;
# the categorical/RNADE Triton section: categorical, RNADE): device, tolerances and the
# comparison helpers.
#
# Tolerances. The kernels compute in fp32 from the exact (upcast) input values,
# so log-probs and logits agree with the fp64 reference to fp32 rounding, scaled
# by D (sums of D terms) - also for fp16/bf16 inputs. Gradients are accumulated
# in fp32 and rounded to the parameter dtype at the end: fp32 atol/rtol 1e-5
# (x the gradient's scale), fp16 2e-3, bf16 1.6e-2 (twice the dtype's unit
# roundoff).


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRAD_RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
LOW = [torch.float16, torch.bfloat16]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, g, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)


def close(actual, expected, atol, rtol, what):
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), atol=atol, rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


def check_grads(got, params, dtype, what, names=("W", "c", "V", "b")):
    for name, g, p in zip(names, got, params):
        assert g.dtype == dtype and g.shape == p.shape, f"{what} d{name}: {g.dtype} {tuple(g.shape)}"
        expected = torch.zeros_like(p) if p.grad is None else p.grad  # D=1: W is never used
        scale = max(1.0, expected.abs().max().item())
        r = GRAD_RTOL[dtype]
        close(g, expected, atol=r * scale, rtol=r, what=f"{what} d{name}")


def ref_grads(fn, x, params, order, grad, x_grad=False):
    """Reference log_prob (fp64) and the autograd leaves of sum(grad * log_prob) (+ x last)."""
    leaves = [p.detach().double().cpu().requires_grad_() for p in params]
    xx = x.cpu().double().requires_grad_(x_grad) if x.dtype.is_floating_point else x.cpu()
    lp = fn(xx, *leaves, order.cpu())
    (lp * grad.double().cpu()).sum().backward()
    return lp.detach(), leaves + ([xx] if x_grad else [])


def near_tie_rows(u, p, eps=1e-5):
    """Rows where some uniform lies within eps of the probability it is compared with."""
    return ((u - p).abs() < eps).flatten(1).any(1)
