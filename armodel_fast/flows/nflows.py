"""nflows' masked affine autoregressive transform and MAF on the fast MADE kernels.

Replace ``nflows.transforms.MaskedAffineAutoregressiveTransform(features, hidden_features,
context_features=C, num_blocks=2)`` by the class of the same name here (and
``nflows.flows.MaskedAutoregressiveFlow`` likewise): ``forward(inputs, context)``
maps data to noise, ``inverse(inputs, context)`` samples in one pass, each
returning ``(outputs, logabsdet [B])`` as nflows does. Differences, each raised
rather than ignored: residual blocks, dropout and batch norm are not in the fast
kernels (``use_residual_blocks`` defaults to False here; nflows' default is True);
the scale is ``exp`` of the soft-clipped log scale (|log scale| < log(1e3)) instead
of ``softplus + 1e-3``; hidden degrees are always drawn at random (seeded).
"""
from __future__ import annotations

import torch.nn.functional as F

from .core import affine_made, require

_transforms = require("nflows.transforms", "nflows")
_base = require("nflows.transforms.base", "nflows")
_flows = require("nflows.flows.base", "nflows")
_distributions = require("nflows.distributions.normal", "nflows")

__all__ = ["MaskedAffineAutoregressiveTransform", "MaskedAutoregressiveFlow"]


def _unsupported(use_residual_blocks, dropout_probability, use_batch_norm) -> None:
    if use_residual_blocks:
        raise NotImplementedError("use_residual_blocks=True is not implemented by the fast MADE yet "
                                  "(pass use_residual_blocks=False)")
    if dropout_probability:
        raise ValueError(f"dropout_probability must be 0 with the fast MADE, got {dropout_probability}")
    if use_batch_norm:
        raise ValueError("use_batch_norm=True is not supported by the fast MADE")


class MaskedAffineAutoregressiveTransform(_base.Transform):
    """nflows' transform: ``num_blocks`` hidden layers of ``hidden_features`` units, natural
    input order, ``activation`` (F.relu, F.elu, torch.tanh or a name). Extra: ``backend``,
    ``scale`` (``"soft_clip"`` or ``"raw"``)."""

    def __init__(self, features: int, hidden_features: int, context_features=None, num_blocks: int = 2,
                 use_residual_blocks: bool = False, random_mask: bool = False, activation=F.relu,
                 dropout_probability: float = 0.0, use_batch_norm: bool = False, backend: str = "auto",
                 scale: str = "soft_clip"):
        super().__init__()
        _unsupported(use_residual_blocks, dropout_probability, use_batch_norm)
        self.features = features
        self.autoregressive_net = affine_made(features, [hidden_features] * num_blocks, context_features or 0,
                                              activation=activation, backend=backend, scale=scale)

    def forward(self, inputs, context=None):
        """inputs [B, D] -> (noise [B, D], log|det d noise / d inputs| [B])."""
        return self.autoregressive_net.transform(inputs, context)

    def inverse(self, inputs, context=None):
        """noise [B, D] -> (inputs [B, D], log|det| [B]) in one pass of the sampler."""
        return self.autoregressive_net.inverse(inputs, context)


class MaskedAutoregressiveFlow(_flows.Flow):
    """``nflows.flows.MaskedAutoregressiveFlow``: ``num_layers`` of (reverse or random
    permutation, :class:`MaskedAffineAutoregressiveTransform`), standard normal base."""

    def __init__(self, features: int, hidden_features: int, num_layers: int, num_blocks_per_layer: int,
                 use_residual_blocks: bool = False, use_random_masks: bool = False,
                 use_random_permutations: bool = False, activation=F.relu, dropout_probability: float = 0.0,
                 batch_norm_within_layers: bool = False, batch_norm_between_layers: bool = False,
                 context_features=None, backend: str = "auto", scale: str = "soft_clip"):
        _unsupported(use_residual_blocks, dropout_probability, batch_norm_within_layers or batch_norm_between_layers)
        permutation = _transforms.RandomPermutation if use_random_permutations else _transforms.ReversePermutation
        layers = []
        for _ in range(num_layers):
            layers += [permutation(features),
                       MaskedAffineAutoregressiveTransform(features, hidden_features, context_features,
                                                           num_blocks_per_layer, random_mask=use_random_masks,
                                                           activation=activation, backend=backend, scale=scale)]
        super().__init__(transform=_transforms.CompositeTransform(layers),
                         distribution=_distributions.StandardNormal([features]))
