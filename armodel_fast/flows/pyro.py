"""pyro's affine autoregressive transforms on the fast MADE kernels.

Replace ``pyro.distributions.transforms.affine_autoregressive(D, hidden_dims=[...])``
(or ``conditional_affine_autoregressive(D, C, ...)``) by the function of the same
name here; ``AffineAutoregressive(nn)`` / ``ConditionalAffineAutoregressive(nn)``
take an ``af.MADE`` (``out="gaussian"``) or a pyro ``AutoRegressiveNN`` /
``ConditionalAutoRegressiveNN`` (its sizes, permutation and nonlinearity are
reused; its weights are not). As in pyro, ``y = scale(x) * x + mean(x)`` with the
parameters computed from x: the forward (``_call``, IAF sampling, MAF ``.inv``
density) is one pass of the masked layers, and the inverse (IAF density, MAF
sampling) runs the one-pass sampler instead of D passes. The log scale is
soft-clipped to |log scale| < log(1e3) (pyro clamps it to [-5, 3]) or raw with
``scale="raw"``. Both directions are differentiable.
"""
from __future__ import annotations

import torch

from ..nn.made import MADE
from .core import affine_made, require

_pt = require("pyro.distributions.torch_transform", "pyro")
_conditional = require("pyro.distributions.conditional", "pyro")
_pyro_nn = require("pyro.nn", "pyro")
_constraints = require("torch.distributions.constraints", "pyro")

__all__ = ["AffineAutoregressive", "ConditionalAffineAutoregressive", "affine_autoregressive",
           "conditional_affine_autoregressive"]


def _as_made(nn, backend: str, scale: str) -> MADE:
    if isinstance(nn, MADE):
        if nn.out != "gaussian" or nn.K != 1:
            raise ValueError("autoregressive_nn must be an af.MADE with out='gaussian' and K=1 (an affine layer)")
        return nn
    if isinstance(nn, _pyro_nn.ConditionalAutoRegressiveNN):
        if list(getattr(nn, "param_dims", [1, 1])) != [1, 1] or getattr(nn, "skip_layer", None) is not None:
            raise ValueError("autoregressive_nn: only param_dims=[1, 1] without skip_connections maps to af.MADE")
        return affine_made(nn.input_dim, list(nn.hidden_dims), getattr(nn, "context_dim", 0),
                           order=nn.permutation.cpu(), activation=nn.f, backend=backend, scale=scale)
    raise TypeError(f"autoregressive_nn must be an af.MADE or a pyro AutoRegressiveNN, got {type(nn).__name__}")


def _check_pyro_options(log_scale_min_clip, log_scale_max_clip, stable) -> None:
    """pyro's transform options: its defaults are taken (sigmoid_bias only acts with stable=True);
    the clamp bounds and the stable form are not implemented (the scale is ``scale=``'s)."""
    if stable:
        raise ValueError(f"stable={stable!r}: pyro's stable (sigmoid) variant is not implemented; "
                         "use stable=False")
    for name, value, default in (("log_scale_min_clip", log_scale_min_clip, -5.0),
                                 ("log_scale_max_clip", log_scale_max_clip, 3.0)):
        if value != default:
            raise ValueError(f"{name}={value!r}: the log scale is bounded by scale='soft_clip' (|log scale| < "
                             f"log(1e3)) or not at all (scale='raw'), not by pyro's clamp; only pyro's default "
                             f"{default} is accepted")


class _AffineMADE(_pt.TransformModule):
    """y = (x - mu(x)) exp(-s(x)) of a MADE given a context: pyro's ``mean = -mu exp(-s)``,
    ``log_scale = -s``. Caches the last (x, y, log|det|) like pyro's transform."""

    domain = _constraints.real_vector
    codomain = _constraints.real_vector
    bijective = True
    sign = +1
    autoregressive = True

    def __init__(self, made: MADE, context=None):
        super().__init__(cache_size=1)
        self.arn = made
        self._context = context
        self._cached_ladj = None

    def _call(self, x):
        y, ladj = self.arn.transform(x, self._context)
        self._cached_ladj = (x, y, ladj)
        return y

    def _inverse(self, y):
        x, ladj_inv = self.arn.inverse(y, self._context)
        self._cached_ladj = (x, y, -ladj_inv)
        return x

    def log_abs_det_jacobian(self, x, y):
        cached = self._cached_ladj
        if cached is not None and cached[0] is x and cached[1] is y:
            return cached[2]
        return self.arn.transform(x, self._context)[1]


class AffineAutoregressive(_AffineMADE):
    """``pyro.distributions.transforms.AffineAutoregressive`` on af.MADE (see the module doc).

    ``backend`` / ``scale`` apply when ``autoregressive_nn`` is a pyro network; pyro's options
    are accepted at their defaults (:func:`_check_pyro_options`).
    """

    def __init__(self, autoregressive_nn, log_scale_min_clip=-5.0, log_scale_max_clip=3.0, sigmoid_bias=2.0,
                 stable=False, *, backend: str = "auto", scale: str = "soft_clip"):
        _check_pyro_options(log_scale_min_clip, log_scale_max_clip, stable)
        super().__init__(_as_made(autoregressive_nn, backend, scale))


class ConditionalAffineAutoregressive(_conditional.ConditionalTransformModule):
    """``pyro...ConditionalAffineAutoregressive``: ``condition(context)`` gives the transform."""

    domain = _constraints.real_vector
    codomain = _constraints.real_vector
    bijective = True
    event_dim = 1

    def __init__(self, autoregressive_nn, log_scale_min_clip=-5.0, log_scale_max_clip=3.0, sigmoid_bias=2.0,
                 stable=False, *, backend: str = "auto", scale: str = "soft_clip"):
        super().__init__()
        _check_pyro_options(log_scale_min_clip, log_scale_max_clip, stable)
        self.nn = _as_made(autoregressive_nn, backend, scale)
        if self.nn.context_dim == 0:
            raise ValueError("autoregressive_nn has no context (context_dim=0): use AffineAutoregressive")

    def condition(self, context):
        return _AffineMADE(self.nn, context)


def _hidden(input_dim: int, hidden_dims):
    return [3 * input_dim + 1] if hidden_dims is None else list(hidden_dims)


def affine_autoregressive(input_dim: int, hidden_dims=None, backend: str = "auto", scale: str = "soft_clip",
                          activation="relu", **kwargs):
    """pyro's helper: a random input permutation, hidden ``[3 * input_dim + 1]`` by default;
    ``kwargs``: pyro's transform options (:class:`AffineAutoregressive`)."""
    return AffineAutoregressive(affine_made(input_dim, _hidden(input_dim, hidden_dims), 0,
                                            order=torch.randperm(input_dim), activation=activation,
                                            backend=backend, scale=scale), **kwargs)


def conditional_affine_autoregressive(input_dim: int, context_dim: int, hidden_dims=None, backend: str = "auto",
                                      scale: str = "soft_clip", activation="relu", **kwargs):
    """pyro's conditional helper (hidden ``[10 * input_dim]`` by default, as pyro's)."""
    hidden = [10 * input_dim] if hidden_dims is None else list(hidden_dims)
    return ConditionalAffineAutoregressive(affine_made(input_dim, hidden, context_dim,
                                                       order=torch.randperm(input_dim), activation=activation,
                                                       backend=backend, scale=scale), **kwargs)
