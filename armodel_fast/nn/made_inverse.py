"""Gradients of ``MADE.inverse`` on the fast backends (docs/DESIGN.md section 4).

The forward is a one-pass sampler (no graph). The backward differentiates the solution
implicitly: x* solves ``x = G(x) = mu(x) + exp(s(x)) * z`` and ``logdet = sum s(x*)``. For
upstream (gx, gl): ``v = gx + gl * d logdet/dx``; ``w = v + (dG/dx)^T w`` by one reverse sweep
over the degrees (:func:`armodel_fast.ops.made.inverse_grad.affine_inverse_adjoint`); then
``d/d(z, context, params) = w^T dG/d(.) + gl * d logdet/d(.)``, one backward pass through
the network at x*. The backward costs about three passes over the weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.made.inverse_grad import affine_inverse_adjoint


class FastInverse(torch.autograd.Function):
    """``(model, backend, z, context, *params) -> (x, logdet)`` of ``MADE.inverse``, one pass each way."""

    @staticmethod
    def forward(ctx, model, backend, z, context, *params):
        ctx.model, ctx.mask_index = model, int(model.mask_index)
        x, logdet = model._sample_with(backend, z, context, model.affine_head)
        ctx.save_for_backward(z, context, x, *params)
        return x, logdet

    @staticmethod
    def backward(ctx, gx, gl):
        if torch.is_grad_enabled():  # create_graph=True: the gradients below would not be differentiable
            raise NotImplementedError(
                "second-order gradients (create_graph=True) through MADE.inverse on the fast backends are not "
                "implemented; use backend='reference' for them")
        model = ctx.model
        z, context, x, *params = ctx.saved_tensors
        current = int(model.mask_index)
        if current != ctx.mask_index:  # the forward's mask set, even if next_mask() ran since
            model.set_mask(ctx.mask_index)
        try:
            return FastInverse._backward(model, z, context, x, params, gx, gl)
        finally:
            if current != ctx.mask_index:
                model.set_mask(current)

    @staticmethod
    def _backward(model, z, context, x, params, gx, gl):
        hidden, output, direct, ctx_w = model._layer_args()
        with torch.enable_grad():
            xs = x.detach().requires_grad_()
            zz = z.detach().requires_grad_()
            cc = None if context is None else context.detach().requires_grad_()
            _, mu, ls = model._params(xs, cc)
            s = ls[..., 0]  # bounded by _params when scale="soft_clip"
            G = mu[..., 0] + torch.exp(s) * zz
            logdet = s.sum(-1)
            gx = torch.zeros_like(x) if gx is None else gx
            gl = torch.zeros_like(logdet) if gl is None else gl
            v = gx + torch.autograd.grad(logdet, xs, gl, retain_graph=True)[0]
            ctx_h = ctx_o = None
            if context is not None:
                with torch.no_grad():
                    ctx_h = F.linear(context, ctx_w[0]) if hidden else None
                    ctx_o = F.linear(context, ctx_w[1])
            w = affine_inverse_adjoint(hidden, output, direct, model.order, x.detach(), z.detach(), v,
                                       model.activation, model.affine_head == "affine", ctx_h, ctx_o)
            inputs = [zz] + ([] if cc is None else [cc]) + list(params)
            grads = list(torch.autograd.grad([G, logdet], inputs, [w, gl], allow_unused=True))
        dz = grads.pop(0)
        dctx = None if cc is None else grads.pop(0)
        return (None, None, dz, dctx, *grads)
