"""nflows' masked affine autoregressive transform and MAF on the fast MADE kernels.

Replace ``nflows.transforms.MaskedAffineAutoregressiveTransform(features, hidden_features,
context_features=C, num_blocks=2)`` by the class of the same name here (and
``nflows.flows.MaskedAutoregressiveFlow`` likewise): ``forward(inputs, context)``
maps data to noise, ``inverse(inputs, context)`` samples in one pass, each
returning ``(outputs, logabsdet [B])`` as nflows does. Residual blocks
(``use_residual_blocks=True``, nflows' default) are nflows' pre-activation blocks
``h + W2 act(W1 act(h))`` (``af.MADE(residual="preact")``), their second layer
initialised near zero as nflows does. Differences, each raised rather than ignored:
dropout and batch norm are not in the fast kernels. Differences in the model: the
scale is ``exp`` of the soft-clipped log scale (|log scale| < log(1e3)) instead of
``softplus + 1e-3``; hidden degrees are always drawn at random (seeded); the context
enters the first layer and the outputs (nflows: the first layer and every block).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..reference.made import SKIP
from .core import affine_made, require

_transforms = require("nflows.transforms", "nflows")
_base = require("nflows.transforms.base", "nflows")
_flows = require("nflows.flows.base", "nflows")
_distributions = require("nflows.distributions.normal", "nflows")

__all__ = ["MaskedAffineAutoregressiveTransform", "MaskedAutoregressiveFlow"]


def _unsupported(use_residual_blocks, random_mask, dropout_probability, use_batch_norm) -> None:
    if use_residual_blocks and random_mask:
        raise ValueError("Residual blocks can't be used with random masks.")  # nflows' own check
    if dropout_probability:
        raise ValueError(f"dropout_probability must be 0 with the fast MADE, got {dropout_probability}")
    if use_batch_norm:
        raise ValueError("use_batch_norm=True is not supported by the fast MADE")


class MaskedAffineAutoregressiveTransform(_base.Transform):
    """nflows' transform: a first masked layer then ``num_blocks`` residual blocks (with
    ``use_residual_blocks=False``: ``num_blocks`` more hidden layers) of ``hidden_features`` units,
    natural input order, ``activation`` (F.relu, F.elu, torch.tanh or a name). Extra:
    ``backend``, ``scale`` (``"soft_clip"`` or ``"raw"``)."""

    def __init__(self, features: int, hidden_features: int, context_features=None, num_blocks: int = 2,
                 use_residual_blocks: bool = True, random_mask: bool = False, activation=F.relu,
                 dropout_probability: float = 0.0, use_batch_norm: bool = False, backend: str = "auto",
                 scale: str = "soft_clip"):
        super().__init__()
        _unsupported(use_residual_blocks, random_mask, dropout_probability, use_batch_norm)
        if use_residual_blocks and num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1 with use_residual_blocks=True, got {num_blocks} "
                             "(pass use_residual_blocks=False for a single hidden layer)")
        self.features = features
        # nflows' MADE: a first layer, then num_blocks blocks (one masked layer each without residual blocks)
        blocks = num_blocks if use_residual_blocks else num_blocks + 1
        made = affine_made(features, [hidden_features] * blocks, context_features or 0, activation=activation,
                           backend=backend, scale=scale, residual="preact" if use_residual_blocks else None)
        if use_residual_blocks:  # nflows' zero_initialization of each block's last layer
            with torch.no_grad():
                for layer, flags in zip(made.layers, made._program):
                    if flags & SKIP:
                        layer.weight.uniform_(-1e-3, 1e-3)
                        layer.bias.uniform_(-1e-3, 1e-3)
        self.autoregressive_net = made

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
                 use_residual_blocks: bool = True, use_random_masks: bool = False,
                 use_random_permutations: bool = False, activation=F.relu, dropout_probability: float = 0.0,
                 batch_norm_within_layers: bool = False, batch_norm_between_layers: bool = False,
                 context_features=None, backend: str = "auto", scale: str = "soft_clip"):
        _unsupported(use_residual_blocks, use_random_masks, dropout_probability,
                     batch_norm_within_layers or batch_norm_between_layers)
        permutation = _transforms.RandomPermutation if use_random_permutations else _transforms.ReversePermutation
        layers = []
        for _ in range(num_layers):
            layers += [permutation(features),
                       MaskedAffineAutoregressiveTransform(features, hidden_features, context_features,
                                                           num_blocks_per_layer, use_residual_blocks,
                                                           random_mask=use_random_masks, activation=activation,
                                                           backend=backend, scale=scale)]
        super().__init__(transform=_transforms.CompositeTransform(layers),
                         distribution=_distributions.StandardNormal([features]))
