"""The Bernoulli head of MADE and FVSBN as one autograd node: ``log p(x) [B] = sum_d x*l - softplus(l)``.

The reference (``reference.heads.bernoulli_log_prob`` then ``.sum(-1)``) is five tensor ops,
each a node in the backward graph; at MNIST's size (B=100, D=784) their forward and backward
take about as long as a [500]-unit MADE's smallest masked product. Here the same arithmetic
runs in one pass each way (docs/DESIGN.md section 7):

* CPU float32 / float64 tensors: the extension's kernels (``csrc/made/bernoulli_head_cpu.cpp``);
* anything else (another device or dtype, no extension, ``torch.compile``, torch.func
  transforms): the reference's ops.

A backward that records a graph (``create_graph=True``) or runs batched
(``is_grads_batched=True``) uses tensor ops with the same gradient, ``g x - g sigmoid(l)``
(two terms, as the reference's autograd adds them: an infinite g gives its NaNs), with
softplus' derivative 1 above 20, where ``F.softplus`` is the identity (as in the kernels).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ... import _ext
from ..._validate import batched_backward, forward_ad_active, transform_active
from ...reference import heads


def _kernels():
    ext = _ext.get_ext()
    return ext if ext is not None and hasattr(ext, "bernoulli_log_prob_forward") else None


class _BernoulliLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, x: Tensor, ext):
        ctx.save_for_backward(logits, x)
        ctx.ext = ext
        return ext.bernoulli_log_prob_forward(logits, x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, x = ctx.saved_tensors
        need_logits, need_x = ctx.needs_input_grad[:2]
        g = grad[:, None]
        if need_logits:
            if torch.is_grad_enabled() or batched_backward(grad):  # recorded, or under vmap: tensor ops
                grad_logits = g * x - g * torch.where(logits > 20, 1.0, torch.sigmoid(logits))
            else:
                grad_logits = ctx.ext.bernoulli_log_prob_backward(grad, logits, x)
        return (grad_logits if need_logits else None), (g * logits if need_x else None), None


def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """logits [B, D], x [B, D] (same dtype and device) -> log p(x) [B]: the values and gradients of
    ``reference.heads.bernoulli_log_prob(logits, x).sum(-1)`` (fp tolerances: another summation order)."""
    ext = _kernels()
    if (ext is None or logits.dim() != 2 or logits.device.type != "cpu" or x.device.type != "cpu"
            or logits.dtype not in (torch.float32, torch.float64) or x.dtype != logits.dtype
            or x.shape != logits.shape or torch.compiler.is_compiling() or transform_active()
            or forward_ad_active()):  # (this node has no jvp)
        return heads.bernoulli_log_prob(logits, x).sum(-1)
    return _BernoulliLogProb.apply(logits, x, ext)
