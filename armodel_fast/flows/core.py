"""What the zuko / nflows / pyro wrappers share: the affine MADE and its torch Transforms.

The affine MADE layer (``af.MADE(out="gaussian")``) gives, for x [..., D],
``z = (x - mu(x)) * exp(-s(x))`` with ``s`` its bounded log scale (:meth:`MADE.transform`,
the fast masked layers) and back ``x = mu + exp(s) z`` (:meth:`MADE.inverse`, the
one-pass sampler). :class:`MADEAffine` exposes the first as a
``torch.distributions.Transform`` (x -> z, the density direction of a MAF) and its
``inv`` the second, each with its log|det| computed in the same pass.
"""
from __future__ import annotations

import importlib

import torch
from torch.distributions import Transform, constraints

from ..nn.made import MADE


def require(module: str, extra: str):
    """Import ``module`` or raise an ImportError saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"armodel_fast.flows.{extra} needs {extra}: pip install 'armodel-fast[{extra}]' "
                          f"({e})") from e


def affine_made(features: int, hidden, context: int = 0, order=None, activation="relu", backend: str = "auto",
                scale: str = "soft_clip", seed=None, direct: bool = False, residual=None) -> MADE:
    """An affine MAF layer: ``af.MADE(features, hidden, out="gaussian", ...)``.

    ``order[t]`` is the dimension transformed at step t (a permutation; None: natural).
    ``seed`` draws the hidden degrees; None takes it from torch's global generator, so
    layers built one after another differ and ``torch.manual_seed`` reproduces them.
    ``residual``: ``af.MADE``'s (None, ``"linear"``, ``"preact"``).
    """
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()))
    return MADE(features, hidden, order=order, direct=direct, out="gaussian", context_dim=context or 0,
                activation=activation, seed=seed, backend=backend, scale=scale, residual=residual)


class MADEAffine(Transform):
    """x [..., D] -> z = (x - mu(x)) exp(-s(x)) of ``made`` given ``context``; ``inv`` samples."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1

    def __init__(self, made: MADE, context=None, cache_size: int = 0):
        super().__init__(cache_size=cache_size)
        self.made, self.context = made, context

    def _call(self, x):
        return self.made.transform(x, self.context)[0]

    def _inverse(self, z):
        return self.made.inverse(z, self.context)[0]

    def log_abs_det_jacobian(self, x, z):
        return self.made.transform(x, self.context)[1]

    def call_and_ladj(self, x):
        """(z, log|det dz/dx|) in one pass (zuko's protocol)."""
        return self.made.transform(x, self.context)

    @property
    def inv(self) -> Transform:
        return MADEAffineInverse(self)

    def with_cache(self, cache_size: int = 1):
        return type(self)(self.made, self.context, cache_size)


class MADEAffineInverse(Transform):
    """The sampling direction z -> x of a :class:`MADEAffine` (one pass; differentiable)."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1

    def __init__(self, forward: MADEAffine):
        super().__init__(cache_size=forward._cache_size)
        self._fwd = forward

    def _call(self, z):
        return self._fwd.made.inverse(z, self._fwd.context)[0]

    def _inverse(self, x):
        return self._fwd._call(x)

    def log_abs_det_jacobian(self, z, x):
        return -self._fwd.log_abs_det_jacobian(x, z)

    def call_and_ladj(self, z):
        """(x, log|det dx/dz|) in one pass."""
        return self._fwd.made.inverse(z, self._fwd.context)

    @property
    def inv(self) -> Transform:
        return self._fwd
