"""Reference MADE (docs/DESIGN.md section 4): degrees, masks, forward, D-pass sampling.

Degrees: input ``m0[d] = position of d in the order + 1`` (1..D); hidden layer
l draws ``m_l[k]`` uniformly in ``[min(m_{l-1}), D-1]``; hidden masks are
``1{m_l[k] >= m_{l-1}[j]}``, the output mask ``1{m0[d] > m_L[k]}`` (strict).
Output unit ``d * P + j`` belongs to dimension d (P parameters per dimension).

Residual MADE (section 4, "Residual blocks"): the hidden layers run a per-layer
program of :data:`ACT_OUT` / :data:`ACT_IN` / :data:`SKIP` flags (:func:`layer_program`).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from . import heads
from .masked_linear import masked_linear

ACTIVATIONS = {"relu": F.relu, "elu": F.elu, "tanh": torch.tanh, "none": lambda t: t}


def input_degrees(order: torch.Tensor) -> torch.Tensor:
    """``m0[d] = t + 1`` where ``order[t] = d``."""
    m0 = torch.empty_like(order)
    m0[order] = torch.arange(1, order.numel() + 1, dtype=order.dtype)
    return m0


def hidden_degrees(m0: torch.Tensor, hidden: Sequence[int], generator: torch.Generator) -> list:
    """Degrees of each hidden layer, sampled in ``[min(previous), D-1]``, each layer's
    units numbered in degree order (ascending).

    Numbering the hidden units by degree is a relabelling that leaves the model family
    (and the distribution of masks) unchanged; it makes every hidden mask a staircase in
    the units' own order, which the fast kernels then run on the weights as stored
    (no sorted copy per training step). With D = 1 no hidden unit can feed an output;
    such units get degree D.
    """
    D = m0.numel()
    degrees, prev = [], m0
    for H in hidden:
        low = int(prev.min())
        if low > D - 1:
            m = torch.full((H,), D, dtype=torch.long)
        else:
            m = torch.randint(low, D, (H,), generator=generator, dtype=torch.long).sort().values
        degrees.append(m)
        prev = m
    return degrees


# A hidden layer's program (bit flags): its output goes through the activation (ACT_OUT),
# it reads the activation of its input (ACT_IN: a pre-activation block's first layer), it
# adds the input of the layer before it (SKIP: a residual block's second layer adds the block's input).
ACT_OUT, ACT_IN, SKIP = 1, 2, 4
RESIDUAL = ("linear", "preact")
# The most hidden layers a MADE may have (blocks count two each): what the C++ / CUDA samplers hold.
MAX_HIDDEN_LAYERS = 63


def layer_program(hidden: Sequence[int], residual=None):
    """(width of each hidden layer, its flags, whether it draws new degrees) for ``hidden``.

    ``residual=None``: plain MADE, one layer per entry, each ``act(W h + b)``.
    ``"linear"`` (zuko's ``residual=True``) / ``"preact"`` (nflows' residual blocks): a first
    layer ``h = W x + b`` (no activation), then per entry of ``hidden`` a block
    ``h <- h + W2 act(W1 g(h) + b1) + b2`` on that width (``g`` the identity, or the activation
    for ``"preact"``), preceded by a projection ``h <- W h + b`` where the width changes. A
    block's layers keep the degrees of its input (non-strict masks), so ``h`` stays
    autoregressive; the output layer reads ``h`` itself.
    """
    if residual is None:
        return list(hidden), [ACT_OUT] * len(hidden), [True] * len(hidden)
    if residual not in RESIDUAL:
        raise ValueError(f"residual must be None, 'linear' or 'preact', got {residual!r}")
    widths, flags, new = [hidden[0]], [0], [True]
    first = ACT_OUT | (ACT_IN if residual == "preact" else 0)
    for i, H in enumerate(hidden):
        if i and H != hidden[i - 1]:
            widths, flags, new = widths + [H], flags + [0], new + [True]
        widths, flags, new = widths + [H, H], flags + [first, SKIP], new + [False, False]
    return widths, flags, new


def made_forward(x, hidden_layers, output_layer, activation: str = "relu",
                 direct_layer=None, context=None, context_weights=None, mask_of=None,
                 program=None) -> torch.Tensor:
    """Raw MADE outputs [B, D*P].

    hidden_layers: list of ``(weight, bias, in_degrees, out_degrees)``;
    output_layer: ``(weight, bias, in_degrees, out_degrees)`` (strict mask);
    direct_layer: ``(weight, in_degrees, out_degrees)`` or None (strict);
    context [B, C] enters unmasked, through ``context_weights = (Wc_hidden [H1, C],
    Wc_out [D*P, C])``: into the first hidden layer and straight into the
    outputs (so it reaches the first dimension too, which has no hidden parents).
    ``mask_of``: as :func:`masked_linear` takes it. ``program``: the hidden layers' flags
    (:func:`layer_program`; None: each ``act(W h + b)``).
    """
    act = ACTIVATIONS[activation]
    h = h_before = x
    for i, (w, b, din, dout) in enumerate(hidden_layers):
        flags = ACT_OUT if program is None else program[i]
        pre = masked_linear(act(h) if flags & ACT_IN else h, w, b, din, dout, strict=False, mask_of=mask_of)
        if i == 0 and context is not None:
            pre = pre + F.linear(context, context_weights[0])
        if flags & SKIP:
            pre = pre + h_before
        h, h_before = (act(pre) if flags & ACT_OUT else pre), h
    w, b, din, dout = output_layer
    out = masked_linear(h, w, b, din, dout, strict=True, mask_of=mask_of)
    if direct_layer is not None:
        w, din, dout = direct_layer
        out = out + masked_linear(x, w, None, din, dout, strict=True, mask_of=mask_of)
    if context is not None:
        out = out + F.linear(context, context_weights[1])
    return out


def sample_by_passes(params_fn: Callable, draw: Callable, log_lik: Callable, order: torch.Tensor,
                     x0: torch.Tensor, u: torch.Tensor):
    """Generic D-pass sampler: one full forward pass per step.

    ``params_fn(x) -> per-dimension params`` (dimension on axis 1);
    ``draw(params_d, u_d) -> x_d``; ``log_lik(params_d, x_d) -> [n]``.
    Returns (x, log p(x)).
    """
    x = x0.clone()
    log_prob = u.new_zeros(u.shape[0])
    for d in order.tolist():
        p = params_fn(x)
        pd = tuple(t[:, d] for t in p) if isinstance(p, tuple) else p[:, d]
        xd = draw(pd, u[:, d])
        x[:, d] = xd
        log_prob = log_prob + log_lik(pd, xd)
    return x, log_prob


def made_ensemble_log_prob(log_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """log of the mean probability over masks: ``logsumexp_k log p_k - log k``."""
    stacked = torch.stack(list(log_probs), dim=0)
    return torch.logsumexp(stacked, dim=0) - torch.log(torch.tensor(float(len(log_probs)), dtype=stacked.dtype))


# The affine flow head's bound on |log sigma|: log(1e3), zuko's default (slope 1e-3), so that
# sigma stays in about [1e-3, 1e3] (smooth: no zero gradient at the bound, unlike a clamp).
LOG_SCALE_BOUND = math.log(1e3)
# head name -> whether the raw log_sigma is soft-clipped (see bounded_log_sigma)
AFFINE_HEADS = {"affine": True, "affine_raw": False}


def bounded_log_sigma(raw: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """The affine head's log sigma: ``raw / (1 + |raw| / LOG_SCALE_BOUND)`` (|.| < the bound,
    ~raw near 0), or ``raw`` itself when ``clip`` is False (head ``"affine_raw"``)."""
    return raw / (1 + raw.abs() / LOG_SCALE_BOUND) if clip else raw


def gaussian_transform(x, mu, log_sigma):
    """MAF direction: z = (x - mu) / sigma, log|dz/dx| = -sum log_sigma (log_sigma already bounded)."""
    return (x - mu) * torch.exp(-log_sigma), -log_sigma.sum(-1)


def affine_transform(x, raw, clip: bool = True):
    """The affine layer's MAF direction from its raw outputs [B, 2D] (mu and raw log sigma
    per dimension): :func:`gaussian_transform` with :func:`bounded_log_sigma`."""
    mu, ls = raw.view(x.shape[0], x.shape[1], 2).unbind(2)
    return gaussian_transform(x, mu, bounded_log_sigma(ls, clip))


def gaussian_inverse_step(mu_d, log_sigma_d, z_d):
    return mu_d + torch.exp(log_sigma_d) * z_d


def made_params_split(raw: torch.Tensor, out: str, D: int, K: Optional[int]):
    """Reshape raw [B, D*P] into the head's per-dimension parameters.

    ``out="affine"``: the K=1 flow layer, P=2 outputs per dimension (mu, log sigma):
    ``(logits, mu, log_sigma)``, each [B, D, 1], with constant zero logits (one component).
    """
    B = raw.shape[0]
    if out == "bernoulli":
        return raw
    if out == "categorical":
        return raw.view(B, D, K)
    if out == "affine":
        mu, log_sigma = raw.view(B, D, 2, 1).unbind(2)
        return raw.new_zeros(B, D, 1), mu, log_sigma
    return raw.view(B, D, 3, K).unbind(2)  # one backward (a stack) instead of a zero-filled [B, D, 3, K] per part


# Per-dimension draw and log-likelihood of each head (params as made_params_split gives them).
HEAD_DRAW = {"bernoulli": heads.bernoulli_sample, "categorical": heads.categorical_sample,
         "gaussian": lambda p, u: heads.gaussian_mixture_sample(*p, u)}
HEAD_LOG_LIK = {"bernoulli": heads.bernoulli_log_prob, "categorical": heads.categorical_log_prob,
            "gaussian": lambda p, x: heads.gaussian_mixture_log_prob(*p, x)}


def made_sample(hidden_layers, output_layer, order: torch.Tensor, noise: torch.Tensor, head: str = "bernoulli",
                K: Optional[int] = None, activation: str = "relu", direct_layer=None, context=None,
                context_weights=None, program=None):
    """D-pass sampler of the functional MADE (the oracle of ``ops.made.made_sample``).

    ``noise``: uniforms [n, D] (bernoulli, categorical) or [n, D, 2] (gaussian
    mixture of K); for ``head="affine"`` / ``"affine_raw"``, z [n, D] of the K=1
    Gaussian flow (output layer: 2 rows per dimension, mu then log sigma), inverted step by step: ``x_d = mu_d + exp(s_d) z_d`` with
    ``s = bounded_log_sigma(log_sigma)`` (``affine``) or the raw log_sigma
    (``affine_raw``); differentiable. Returns (x [n, D], log p(x) [n]), or
    (x, log|det dx/dz| = sum s) for the affine heads. ``program``: as :func:`made_forward`.
    """
    steps = order.tolist() if isinstance(order, torch.Tensor) else list(order)  # a list traces under compile
    n, D = noise.shape[0], len(steps)
    dtype = output_layer[0].dtype
    affine = head in AFFINE_HEADS
    out = "affine" if affine else head
    k = 1 if affine else K

    def params(x):
        inp = F.one_hot(x, K).to(dtype).reshape(n, D * K) if head == "categorical" else x
        raw = made_forward(inp, hidden_layers, output_layer, activation, direct_layer, context, context_weights,
                           program=program)
        return made_params_split(raw, out, D, k)

    if not affine:
        x0 = torch.zeros(n, D, dtype=torch.long if head == "categorical" else dtype, device=noise.device)
        return sample_by_passes(params, HEAD_DRAW[head], HEAD_LOG_LIK[head], torch.as_tensor(steps), x0,
                                noise.to(dtype))
    z = noise.to(dtype)
    x, logdet = torch.zeros_like(z), z.new_zeros(n)
    for d in steps:
        _, mu, ls = params(x)
        s_d = bounded_log_sigma(ls[:, d, 0], AFFINE_HEADS[head])
        x = x.clone()
        x[:, d] = gaussian_inverse_step(mu[:, d, 0], s_d, z[:, d])
        logdet = logdet + s_d
    return x, logdet
