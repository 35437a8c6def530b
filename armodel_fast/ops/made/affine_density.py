"""The affine MADE's density direction (MAF) as one autograd node: ``z = (x - mu) / sigma``.

The reference (``reference.made``: ``made_params_split``, ``bounded_log_sigma``,
``gaussian_transform``) composes it from about ten tensor ops, each a node in the
backward graph, and its split of the raw outputs ``[B, D, 2]`` into mu and log sigma
has a backward that interleaves the two gradients again (a ``stack`` on the last
dimension: the slowest op of a small flow's training step). Here the forward is the
same arithmetic and the backward is written out (docs/DESIGN.md section 4, the affine
flow's density direction), with both gradients put into the raw layout in one pass.
A backward that records a graph (``create_graph=True``: gradients of gradients)
differentiates the reference's composition instead. Under ``torch.compile`` the reference ops are traced instead (the compiler fuses
them itself).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ...reference import made as ref
from ...reference.made import LOG_SCALE_BOUND


class _AffineDensity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, raw: Tensor, clip: bool):
        p = torch.view_as_complex(raw.view(x.shape[0], x.shape[1], 2))  # mu + i * raw log sigma, no copy
        mu, ls = p.real, p.imag
        # log sigma = ls / (1 + |ls| / bound) (reference.made.bounded_log_sigma), or ls itself
        den = 1 + ls.abs() / LOG_SCALE_BOUND if clip else None
        log_sigma = ls / den if clip else ls
        inv_sigma = torch.exp(-log_sigma)
        z = (x - mu) * inv_sigma
        ctx.save_for_backward(x, raw, inv_sigma, z, den)
        ctx.clip = clip
        return z, -log_sigma.sum(-1)

    @staticmethod
    def backward(ctx, grad_z: Tensor, grad_logdet: Tensor):
        x, raw, inv_sigma, z, den = ctx.saved_tensors
        B, D = z.shape
        if torch.is_grad_enabled():  # create_graph=True: a graph of the reference ops, differentiable again
            with torch.enable_grad():
                outs = _reference(x, raw, ctx.clip)
            pairs = [(o, g) for o, g in zip(outs, (grad_z, grad_logdet)) if g is not None]
            grad_x, grad_raw = torch.autograd.grad([o for o, _ in pairs], [x, raw], [g for _, g in pairs],
                                                   create_graph=True, allow_unused=True)
            return grad_x, grad_raw, None
        if grad_z is None:
            grad_z = z.new_zeros(B, D)
        if grad_logdet is None:
            grad_logdet = z.new_zeros(B)
        grad_x = grad_z * inv_sigma  # dz/dx = 1/sigma; dz/dmu = -1/sigma
        grad_log_sigma = -(grad_z * z + grad_logdet[:, None])  # dz/dlog_sigma = -z, dlogdet/dlog_sigma = -1
        grad_ls = grad_log_sigma / den.square() if ctx.clip else grad_log_sigma  # d(ls / den)/dls = 1/den^2
        grad_raw = torch.view_as_real(torch.complex(-grad_x, grad_ls)).view(B, 2 * D)
        return (grad_x if ctx.needs_input_grad[0] else None), grad_raw, None


def _reference(x: Tensor, raw: Tensor, clip: bool) -> Tuple[Tensor, Tensor]:
    mu, ls = raw.view(x.shape[0], x.shape[1], 2).unbind(2)
    return ref.gaussian_transform(x, mu, ref.bounded_log_sigma(ls, clip))


def affine_density(x: Tensor, raw: Tensor, clip: bool) -> Tuple[Tensor, Tensor]:
    """x [B, D], raw [B, 2D] (the affine MADE's outputs: mu and raw log sigma interleaved
    per dimension) -> (z [B, D], log|det dz/dx| [B]), the values and gradients of
    ``reference.made.gaussian_transform(x, mu, bounded_log_sigma(ls, clip))``.
    float32 / float64 (the complex views need them); other dtypes take the reference ops."""
    if x.dtype not in (torch.float32, torch.float64) or raw.dtype != x.dtype or torch.compiler.is_compiling():
        return _reference(x, raw, clip)
    if not raw.is_contiguous() or raw.storage_offset() % 2:  # the complex view needs pairs in place
        raw = raw.clone(memory_format=torch.contiguous_format)
    return _AffineDensity.apply(x, raw, clip)
