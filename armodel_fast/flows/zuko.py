"""zuko's masked autoregressive transform and MAF on the fast MADE kernels.

Replace ``zuko.flows.MAF(features, context, transforms=5, hidden_features=(256, 256))``
by ``armodel_fast.flows.zuko.MAF(...)``: the same arguments, the same lazy
call convention (``flow(c).log_prob(x)``, ``flow(c).rsample((n,))``, context
``c [C]`` or ``[..., C]``). The univariate transform is zuko's
``MonotonicAffineTransform`` with its default bound (|log scale| < log(1e3)):
``scale="raw"`` drops the bound. Sampling runs the one-pass sampler instead of
``features`` passes of the network.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .core import MADEAffine, affine_made, require

_zuko = require("zuko", "zuko")
_flows = require("zuko.flows", "zuko")
_dists = require("zuko.distributions", "zuko")
_transforms = require("zuko.transforms", "zuko")

__all__ = ["MaskedAutoregressiveTransform", "MAF"]


class MaskedAutoregressiveTransform(_flows.LazyTransform):
    """``zuko.flows.MaskedAutoregressiveTransform`` (affine univariate transform) on af.MADE.

    Arguments as zuko's: ``features``, ``context``, ``order`` (zuko's convention:
    ``order[i]`` is the rank of feature i), ``hidden_features``, ``activation`` (an
    ``nn.Module`` class: ReLU, ELU, Tanh or Identity). ``passes`` must be None or
    ``features`` (fully autoregressive), ``adjacency`` None, ``univariate``
    ``MonotonicAffineTransform``; ``residual=True`` gives zuko's residual blocks
    ``h + W2 act(W1 h)`` (``af.MADE(residual="linear")``).
    Extra: ``backend`` (default ``"auto"``), ``scale`` (``"soft_clip"`` or ``"raw"``).
    ``forward(c)`` returns a ``torch.distributions.Transform`` x -> z (density
    direction) whose ``inv`` samples.
    """

    def __init__(self, features: int, context: int = 0, passes=None, order=None, adjacency=None,
                 univariate=None, shapes=((), ()), hidden_features: Sequence[int] = (64, 64), activation=None,
                 residual: bool = False, backend: str = "auto", scale: str = "soft_clip"):
        super().__init__()
        if passes not in (None, features):
            raise ValueError(f"passes must be None or features={features} (fully autoregressive), got {passes!r}")
        if adjacency is not None:
            raise ValueError("adjacency is not supported by the fast MADE: pass order instead")
        if univariate not in (None, _transforms.MonotonicAffineTransform) or tuple(shapes) != ((), ()):
            raise ValueError("univariate must be zuko.transforms.MonotonicAffineTransform (the affine MAF layer)")
        rank = torch.arange(features) if order is None else torch.as_tensor(order, dtype=torch.long)
        if rank.dim() != 1 or rank.numel() != features:
            raise ValueError(f"order must have {features} elements, got shape {tuple(rank.shape)}")
        self.made = affine_made(features, hidden_features, context, order=torch.argsort(rank, stable=True),
                                activation=torch.nn.ReLU if activation is None else activation,
                                backend=backend, scale=scale, residual="linear" if residual else None)

    # zuko's attributes: the rank of each feature, one pass per feature, the affine univariate
    # transform of two scalars (its ``hyper`` network is ``made`` here, called as af.MADE)
    order = property(lambda self: torch.argsort(self.made.order, stable=True))
    passes = property(lambda self: self.made.D)
    univariate = _transforms.MonotonicAffineTransform
    shapes, total = ((), ()), 2

    def forward(self, c=None) -> MADEAffine:
        return MADEAffine(self.made, c)


class MAF(_flows.Flow):
    """``zuko.flows.MAF`` on the fast MADE: ``transforms`` layers alternating the natural and
    reversed orders (or random ones with ``randperm=True``), a standard normal base;
    ``kwargs`` go to :class:`MaskedAutoregressiveTransform`."""

    def __init__(self, features: int, context: int = 0, transforms: int = 3, randperm: bool = False, **kwargs):
        orders = [torch.arange(features), torch.flipud(torch.arange(features))]
        layers = [MaskedAutoregressiveTransform(features, context,
                                                order=torch.randperm(features) if randperm else orders[i % 2],
                                                **kwargs)
                  for i in range(transforms)]
        base = _flows.UnconditionalDistribution(_dists.DiagNormal, loc=torch.zeros(features),
                                                scale=torch.ones(features), buffer=True)
        super().__init__(layers, base)
