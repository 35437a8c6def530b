"""Output heads shared by every model: log-likelihoods and inverse-CDF sampling.

Sampling takes caller-supplied uniforms ``u`` so that a kernel and the
reference draw the same samples from the same ``u`` (docs/DESIGN.md section 2):

* Bernoulli: ``x = 1{u < sigmoid(logit)}``; ``u`` has shape ``[...]``.
* Categorical: ``x = #{k < K-1 : cdf_k <= u}`` with ``cdf_k = p_0 + ... + p_k``
  (the smallest k whose cumulative probability exceeds ``u``); ``u [...]``.
* Mixture of Gaussians: ``u [..., 2]``; ``u[..., 0]`` picks the component by
  the categorical rule on the mixture weights, ``u[..., 1]`` gives
  ``z = Phi^{-1}(u)`` (clamped to ``[1e-6, 1 - 1e-6]``) and ``x = mu_k + exp(log_sigma_k) z``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

U_EPS = 1e-6  # uniforms are clamped to [U_EPS, 1 - U_EPS] before Phi^{-1}
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Elementwise ``log p(x | logit) = x*logit - softplus(logit)`` (stable)."""
    return x * logits - F.softplus(logits)


def bernoulli_sample(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return (u < torch.sigmoid(logits)).to(logits.dtype)


def categorical_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """logits [..., K], x [...] int64 -> log p [...]."""
    return torch.log_softmax(logits, dim=-1).gather(-1, x.unsqueeze(-1)).squeeze(-1)


def categorical_sample(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """logits [..., K], u [...] -> int64 [...] by the inverse-CDF rule above."""
    cdf = torch.cumsum(torch.softmax(logits, dim=-1), dim=-1)[..., :-1]
    return (cdf <= u.unsqueeze(-1)).sum(-1)


def gaussian_mixture_log_prob(logits, mu, log_sigma, x):
    """logits, mu, log_sigma [..., K]; x [...] -> log density [...]."""
    z = (x.unsqueeze(-1) - mu) * torch.exp(-log_sigma)
    comp = -0.5 * z * z - log_sigma - LOG_SQRT_2PI
    return torch.logsumexp(torch.log_softmax(logits, dim=-1) + comp, dim=-1)


def gaussian_mixture_sample(logits, mu, log_sigma, u):
    """logits, mu, log_sigma [..., K]; u [..., 2] -> x [...]."""
    k = categorical_sample(logits, u[..., 0]).unsqueeze(-1)
    mu_k, ls_k = mu.gather(-1, k).squeeze(-1), log_sigma.gather(-1, k).squeeze(-1)
    if mu.dtype in (torch.float16, torch.bfloat16):  # in fp32, rounded once (no half ndtri on the CPU)
        z = torch.special.ndtri(u[..., 1].float().clamp(U_EPS, 1 - U_EPS))
        return (mu_k.float() + torch.exp(ls_k.float()) * z).to(mu.dtype)
    z = torch.special.ndtri(u[..., 1].clamp(U_EPS, 1 - U_EPS))
    return mu_k + torch.exp(ls_k) * z
