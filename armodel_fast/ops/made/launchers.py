"""The one-pass MADE samplers of every backend, registered in :mod:`armodel_fast.dispatch`.

``prepare(weight, in_degrees, out_degrees, strict)``: the degree-sorted weights the
sampler reads (masked staircase blocks for cpp; unmasked sorted weights for triton
and cuda, which read only the reachable prefix of each row).
``sample(weights, biases, degrees, direct, order, ctx_h, ctx_o, noise, head, K, activation, program)
-> (x, log_prob)``: all D steps in one call, every hidden unit computed once (``program``: each
hidden layer's ``reference.made`` ACT_OUT / ACT_IN / SKIP flags)
(csrc/made/made_cpu.cpp, kernels/made_sample_triton.py, csrc/made/made_cuda.cu).
"""
from __future__ import annotations

import torch

from ... import _ext
from ...dispatch import BackendUnavailableError, register
from ...reference import heads as _heads
from ..masked_linear import ACTIVATIONS, prepare, prepare_sorted, prepare_triton

HEADS = {"bernoulli": 0, "categorical": 1, "gaussian": 2, "affine": 3, "affine_raw": 4}
# The fast backends of MADE / FVSBN and the native function their chained masked layers need
# (forward.py and sample.py register their drivers for each).
FAST_BACKENDS = {"cpp": "masked_linear_plan", "triton": (), "cuda": "masked_linear_forward"}
CPP_SAMPLE_DTYPES = (torch.float32, torch.float64)


def _native(ext, name: str):
    if ext is None or not hasattr(ext, "made_sample"):
        raise BackendUnavailableError(f"made_sample backend {name!r} is unavailable: the extension has no "
                                      "made_sample kernel; rebuild it")
    return ext


@register("made_sample", "prepare", "cpp", requires="masked_linear_prepare")
def _cpp_prepare(weight, in_degrees, out_degrees, strict):
    return prepare(weight, in_degrees, out_degrees, strict)


@register("made_sample", "sample", "cpp", dtypes=CPP_SAMPLE_DTYPES, requires="made_sample")
def _cpp_sample(weights, biases, degrees, direct, order, ctx_h, ctx_o, noise, head, K, activation, program):
    return _native(_ext.get_ext(), "cpp").made_sample(weights, biases, degrees, direct, order, ctx_h, ctx_o, noise,
                                                      HEADS[head], K, ACTIVATIONS[activation], program)


@register("made_sample", "prepare", "cuda", requires="masked_linear_forward")
def _cuda_prepare(weight, in_degrees, out_degrees, strict):
    return prepare_sorted(weight, in_degrees, out_degrees)


@register("made_sample", "sample", "cuda", requires="made_sample")
def _cuda_sample(weights, biases, degrees, direct, order, ctx_h, ctx_o, noise, head, K, activation, program):
    ct = weights[0].dtype  # the CUDA kernel computes in the sorted weights' dtype (fp32 for fp16/bf16 models)
    biases = [bb.to(ct) for bb in biases]
    direct, ctx_h, ctx_o = (None if t is None else t.to(ct) for t in (direct, ctx_h, ctx_o))
    return _native(_ext.get_cuda_ext(), "cuda").made_sample(weights, biases, degrees, direct, order, ctx_h, ctx_o,
                                                            noise.to(ct), HEADS[head], K, ACTIVATIONS[activation],
                                                            program)


register("made_sample", "prepare", "triton")(prepare_triton)


@register("made_sample", "sample", "triton")
def _triton_sample(weights, biases, degrees, direct, order, ctx_h, ctx_o, noise, head, K, activation, program):
    from ...kernels import made_sample_triton  # imports triton: only when the backend is used
    z = None
    if head == "gaussian":  # Phi^-1 exactly as reference/heads.py computes it
        z = torch.special.ndtri(noise[..., 1].clamp(_heads.U_EPS, 1 - _heads.U_EPS)).contiguous()
    return made_sample_triton.made_sample(weights, biases, degrees, direct, order, ctx_h, ctx_o, noise, head, K,
                                          ACTIVATIONS[activation], z, program=program)
