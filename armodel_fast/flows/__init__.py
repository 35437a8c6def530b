"""Drop-in fast masked autoregressive transforms for zuko, nflows and pyro.

Each submodule imports its library only when it is imported itself, so
``import armodel_fast`` works without any of them::

    from armodel_fast.flows import zuko as afz      # needs `pip install armodel-fast[zuko]`
    flow = afz.MAF(features, context, transforms=5)  # was zuko.flows.MAF(...)

* :mod:`armodel_fast.flows.zuko`: ``MaskedAutoregressiveTransform``, ``MAF``.
* :mod:`armodel_fast.flows.nflows`: ``MaskedAffineAutoregressiveTransform``,
  ``MaskedAutoregressiveFlow``.
* :mod:`armodel_fast.flows.pyro`: ``AffineAutoregressive``,
  ``ConditionalAffineAutoregressive``, ``affine_autoregressive``,
  ``conditional_affine_autoregressive``.

Every transform holds an :class:`armodel_fast.MADE` (``out="gaussian"``, K=1):
the density direction runs the fast masked layers, the sampling direction the
one-pass sampler, both differentiable.
"""
from .core import affine_made

__all__ = ["affine_made"]
