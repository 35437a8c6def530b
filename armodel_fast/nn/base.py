"""Shared plumbing of the model modules: backend choice, uniforms, devices."""
from __future__ import annotations

import torch
from torch import nn

from ..dispatch import check_backend, resolve_backend
from .._validate import check_positive_int, check_uniforms
from .masked_linear import MaskedLinear


class AutoregressiveModel(nn.Module):
    """Base class: ``log_prob``, ``forward`` and ``sample`` dispatch by ``backend``.

    Subclasses set ``op`` (the kernel name looked up in the backend registry)
    and ``uniform_trailing`` (extra trailing dims of the uniforms per sample:
    ``()`` for Bernoulli/categorical, ``(2,)`` for Gaussian mixtures).
    """

    op: str = ""
    uniform_trailing: tuple = ()

    def __init__(self, D: int, backend: str = "reference"):
        super().__init__()
        self.D = check_positive_int("D", D)
        self.backend = check_backend(backend, self.op)
        self.last_backend = None  # the backend that ran the most recent call

    def set_backend(self, backend: str) -> "AutoregressiveModel":
        self.backend = check_backend(backend, self.op)
        for layer in self.modules():  # inner masked layers (MADE, FVSBN) show the model's choice
            if isinstance(layer, MaskedLinear):
                layer.backend = backend
        return self

    def _param(self) -> torch.Tensor:
        return next(self.parameters())

    @property
    def device(self) -> torch.device:
        return self._param().device

    @property
    def dtype(self) -> torch.dtype:
        return self._param().dtype

    def _resolve(self, op: str = "", work=None) -> str:
        """Pick the backend for this call (of ``op``, default ``self.op``; ``auto`` takes one
        with kernels for the parameters' dtype and, given ``work`` (a ``dispatch.Work`` or a
        callable returning one), applies the CPU size rule) and remember it in ``last_backend``."""
        p = self._param()
        picked = resolve_backend(self.backend, op or self.op, p.device, p.dtype, work=work)
        object.__setattr__(self, "last_backend", picked)  # a plain attribute: nn.Module.__setattr__'s checks cost more
        return picked

    @property
    def _fused_heads(self) -> bool:
        """Whether the output heads run as one autograd node each (``ops.made.bernoulli_log_prob``,
        ``ops.made.affine_density``): with every backend but "reference", which stays plain PyTorch
        (the ops themselves take the reference math where their nodes do not apply: torch.compile,
        torch.func, forward-mode AD)."""
        return self.backend != "reference"

    def uniforms_shape(self, n: int) -> tuple:
        """Shape of the uniforms ``sample(n, u=...)`` takes: ``[n, D, *uniform_trailing]``."""
        return (n, self.D) + tuple(self.uniform_trailing)

    def _uniforms(self, n, u, generator) -> torch.Tensor:
        check_positive_int("n", n)
        if u is None:
            return torch.rand(self.uniforms_shape(n), generator=generator, device=self.device, dtype=self.dtype)
        return check_uniforms(u, n, self.D, tuple(self.uniform_trailing), self.device, self.dtype)

    def extra_repr(self) -> str:
        return f"D={self.D}, backend={self.backend!r}"
