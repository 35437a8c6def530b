"""Shared by the Triton NADE kernel tests (test_nade_triton.py: binary;
test_nade_variants_triton.py: categorical, RNADE): device, tolerances and the
comparison helpers.

Tolerances. The kernels compute in fp32 from the exact (upcast) input values,
so log-probs and logits agree with the fp64 reference to fp32 rounding, scaled
by D (sums of D terms) - also for fp16/bf16 inputs. Gradients are accumulated
in fp32 and rounded to the parameter dtype at the end: fp32 atol/rtol 1e-5
(x the gradient's scale), fp16 2e-3, bf16 1.6e-2 (twice the dtype's unit
roundoff).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

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
