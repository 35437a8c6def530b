"""The affine MADE's density direction (MAF) as one autograd node: ``z = (x - mu) / sigma``.

The reference (``reference.made.affine_transform``: ``bounded_log_sigma``,
``gaussian_transform``) composes it from about ten tensor ops, each a node in the
backward graph, and its split of the raw outputs ``[B, D, 2]`` into mu and log sigma
has a backward that interleaves the two gradients again (a ``stack`` on the last
dimension: the slowest op of a small flow's training step). Here the same arithmetic
has its backward written out (docs/DESIGN.md section 4, the affine flow's density
direction), both gradients put into the raw layout in one pass:

* CPU tensors: the extension's kernels (``csrc/made/affine_density_cpu.cpp``), one
  pass each way;
* other devices, or no extension: a few tensor ops (``_forward_torch``, ``_backward_torch``).

A backward that records a graph (``create_graph=True``: gradients of gradients)
differentiates the reference's composition instead; under ``torch.compile`` the
reference ops are traced (the compiler fuses them itself).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ... import _ext
from ..._validate import forward_ad_active, transform_active
from ...reference import made as ref
from ...reference.made import LOG_SCALE_BOUND


def _forward_torch(x: Tensor, raw: Tensor, clip: bool):
    """(z, log|det|, 1/sigma, x - mu) by tensor ops (any device)."""
    p = torch.view_as_complex(raw.view(x.shape[0], x.shape[1], 2))  # mu + i * raw log sigma, no copy
    ls = p.imag
    log_sigma = ls / (1 + ls.abs() / LOG_SCALE_BOUND) if clip else ls  # reference.made.bounded_log_sigma
    inv_sigma = torch.exp(-log_sigma)
    centered = x - p.real
    return centered * inv_sigma, -log_sigma.sum(-1), inv_sigma, centered


def _backward_torch(grad_z, grad_logdet, raw, inv_sigma, centered, clip, need_dx):
    B, D = centered.shape
    grad_z = centered.new_zeros(B, D) if grad_z is None else grad_z
    grad_logdet = centered.new_zeros(B) if grad_logdet is None else grad_logdet
    grad_x = grad_z * inv_sigma  # dz/dx = 1/sigma; dz/dmu = -1/sigma
    grad_ls = -(grad_z * centered * inv_sigma + grad_logdet[:, None])  # dz/dlog_sigma = -z, dlogdet/dlog_sigma = -1
    if clip:  # d(a / den)/da = 1 / den^2, den = 1 + |a| / bound
        grad_ls = grad_ls / (1 + torch.view_as_complex(raw.view(B, D, 2)).imag.abs() / LOG_SCALE_BOUND).square()
    return (grad_x if need_dx else None), torch.view_as_real(torch.complex(-grad_x, grad_ls)).view(B, 2 * D)


def _cpu_kernels(t: Tensor):
    """The extension's kernels for a CPU tensor (None: tensor ops)."""
    if t.device.type != "cpu":
        return None
    ext = _ext.get_ext()
    return ext if ext is not None and hasattr(ext, "affine_density_forward") else None


class _AffineDensity(torch.autograd.Function):
    """Saves no tensor the caller holds besides x (which the network's first layer saves
    too): not z, so editing z in place after the call leaves the backward valid, as in the
    reference."""

    @staticmethod
    def forward(ctx, x: Tensor, raw: Tensor, clip: bool):
        ext = _cpu_kernels(x)
        z, logdet, inv_sigma, centered = (ext.affine_density_forward(x, raw, clip) if ext is not None
                                          else _forward_torch(x, raw, clip))
        ctx.save_for_backward(x, raw, inv_sigma, centered)
        ctx.clip, ctx.ext = clip, ext
        return z, logdet

    @staticmethod
    def backward(ctx, grad_z: Tensor, grad_logdet: Tensor):
        x, raw, inv_sigma, centered = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a graph of the reference ops, differentiable again
            return (*_reference_grads(ctx, x, raw, grad_z, grad_logdet), None)
        run = ctx.ext.affine_density_backward if ctx.ext is not None else _backward_torch
        grad_x, grad_raw = run(grad_z, grad_logdet, raw, inv_sigma, centered, ctx.clip, ctx.needs_input_grad[0])
        return grad_x, grad_raw, None


def _reference_grads(ctx, x, raw, grad_z, grad_logdet):
    """(grad x, grad raw) through the reference's ops, recorded (gradients of gradients): only
    for the inputs that need one, from the outputs that depend on them."""
    wanted = [t for t, need in zip((x, raw), ctx.needs_input_grad[:2]) if need]
    with torch.enable_grad():
        outs = ref.affine_transform(x, raw, ctx.clip)
    pairs = [(o, g) for o, g in zip(outs, (grad_z, grad_logdet)) if g is not None and o.requires_grad]
    got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], create_graph=True,
                                   allow_unused=True) if pairs and wanted else [None] * len(wanted))
    return tuple(next(got) if need else None for need in ctx.needs_input_grad[:2])


def affine_density(x: Tensor, raw: Tensor, clip: bool) -> Tuple[Tensor, Tensor]:
    """x [B, D], raw [B, 2D] (the affine MADE's outputs: mu and raw log sigma interleaved
    per dimension) -> (z [B, D], log|det dz/dx| [B]), the values and gradients of
    ``reference.made.affine_transform(x, raw, clip)``.
    float32 / float64 (the complex views need them); other dtypes take the reference ops."""
    if (x.dtype not in (torch.float32, torch.float64) or raw.dtype != x.dtype or torch.compiler.is_compiling()
            or transform_active() or forward_ad_active()):  # the reference ops have functorch rules and jvps
        return ref.affine_transform(x, raw, clip)
    if raw.device != x.device:
        raise ValueError(f"raw is on {raw.device} but x is on {x.device}")
    if not raw.is_contiguous() or raw.storage_offset() % 2:  # the complex view needs pairs in place
        raw = raw.clone(memory_format=torch.contiguous_format)
    return _AffineDensity.apply(x, raw, clip)
