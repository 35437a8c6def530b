"""Per-element math of the Triton masked linear layer, the counterpart of
``csrc/masked_linear/masked_linear_math.h``: the mask test, the activations and their
gradients from the output, and the dot / store helpers that work around the
Triton interpreter's bf16 handling. Shared by ``masked_linear_triton`` and
``made_sample_triton``.
"""
from __future__ import annotations

import triton
import triton.language as tl

ACT_CODES = {"none": 0, "relu": 1, "elu": 2, "tanh": 3}  # as csrc/masked_linear/masked_linear_math.h


@triton.jit
def connected(dout, din, STRICT: tl.constexpr):
    """The mask test of csrc/masked_linear/masked_linear_math.h (``ml::connected``)."""
    if STRICT:
        return dout > din
    else:
        return dout >= din


@triton.jit
def expm1(v):
    """exp(v) - 1 to full precision near 0 (Kahan: (u - 1) * v / log(u))."""
    u = tl.exp(v)
    um1 = u - 1.0
    small = (u == 1.0) | (um1 == -1.0)
    return tl.where(small, tl.where(u == 1.0, v, um1), um1 * (v / tl.log(tl.where(small, 2.0, u))))


@triton.jit
def activate(v, ACT: tl.constexpr):
    # NaN passes through (as torch's relu / elu): tl.maximum / tl.minimum would drop it.
    if ACT == 1:
        v = tl.where(v < 0.0, 0.0, v)
    elif ACT == 2:
        v = tl.where(v < 0.0, expm1(tl.where(v < 0.0, v, 0.0)), v)
    elif ACT == 3:  # tanh = -expm1(-2|v|) / (2 + expm1(-2|v|)), no overflow
        e = expm1(-2.0 * tl.abs(v))
        t = -e / (2.0 + e)
        v = tl.where(v < 0.0, -t, t)
    return v


@triton.jit
def activation_grad(y, ACT: tl.constexpr):
    """d act / d pre-activation (ACT > 0) from the output y (``ml::activation_grad_from_output``)."""
    if ACT == 1:
        return tl.where(y > 0.0, 1.0, 0.0)
    elif ACT == 2:
        return tl.where(y > 0.0, 1.0, y + 1.0)
    else:
        return 1.0 - y * y


@triton.jit
def mma(a, b, acc, ACC: tl.constexpr, PRECISION: tl.constexpr, INTERP_BF16: tl.constexpr):
    """``acc + a @ b``. INTERP_BF16 (interpreter + bf16 only): its ``tl.dot`` multiplies the raw
    bf16 bit patterns (triton-lang/triton#11584), so the exact fp32 values go in instead."""
    if INTERP_BF16:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee", out_dtype=ACC)
    else:
        return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)


@triton.jit
def to_out(v, ptr, INTERP_BF16: tl.constexpr):
    """``v`` in ``ptr``'s element type. INTERP_BF16: the interpreter converts fp32 to bf16 by
    truncation (a bias that grows through the backward's sums); round to nearest even first,
    as the GPU's conversion does."""
    if INTERP_BF16:  # normal numbers only (its converter mishandles fp32 subnormals)
        bits = v.to(tl.uint32, bitcast=True)
        v = tl.where(tl.abs(v) >= 1.2e-38, (bits + 0x7FFF + ((bits >> 16) & 1)).to(tl.float32, bitcast=True), v)
    return v.to(ptr.dtype.element_ty)
