"""MADE: masked autoencoder for distribution estimation (DESIGN.md section 4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import (check_binary_x, check_bool, check_categorical_x, check_context, check_order,
                         check_positive_int, check_real_x, check_seed, check_tensor)
from ..ops import made as fast
from ..reference import made as ref
from .base import AutoregressiveModel
from .masked_linear import MaskedLinear

OUTPUTS = ("bernoulli", "categorical", "gaussian")


class MADE(AutoregressiveModel):
    """MADE with ``num_masks`` fixed mask sets, optional direct connections and context.

    * ``out="bernoulli"``: x [B, D] in {0, 1}; ``forward -> logits [B, D]``; ``u [n, D]``.
    * ``out="categorical"``: x [B, D] int64 in [0, K), fed one-hot;
      ``forward -> logits [B, D, K]``; ``u [n, D]``.
    * ``out="gaussian"`` (K components, default 1): x real [B, D];
      ``forward -> (logits, mu, log_sigma)``, each [B, D, K]; ``u [n, D, 2]``.

    ``order``: None (natural), a permutation, or ``"random"`` (each mask set
    draws its own ordering: order-agnostic training). Degrees of all mask sets
    are drawn once from ``seed`` and stored as buffers; :meth:`next_mask`
    switches to the next set (call it every minibatch for connectivity-agnostic
    training). ``seed`` must be an int (None is refused: the masks must be reproducible
    from the constructor's arguments). ``context [B, context_dim]`` enters unmasked,
    into the first hidden layer and directly into the outputs.
    """

    op = "made"

    def __init__(self, D: int, hidden, num_masks: int = 1, order=None, direct: bool = False,
                 out: str = "bernoulli", K=None, context_dim: int = 0, activation: str = "relu",
                 seed: int = 0, backend: str = "reference", device=None, dtype=None):
        super().__init__(D, backend)
        if isinstance(hidden, int) or not all(isinstance(h, int) and not isinstance(h, bool) for h in hidden):
            raise TypeError("hidden must be a list of ints, e.g. hidden=[500, 500]")
        if len(hidden) == 0 or min(hidden) < 1:
            raise ValueError(f"hidden must be a non-empty list of positive sizes, got {list(hidden)}")
        self.hidden = list(hidden)
        self.num_masks = check_positive_int("num_masks", num_masks)
        if out not in OUTPUTS:
            raise ValueError(f"out must be one of {OUTPUTS}, got {out!r}")
        self.out = out
        if out == "bernoulli" and K not in (None, 1):
            raise ValueError(f"K must be None for out='bernoulli', got {K}")
        if out == "categorical" and K is None:
            raise ValueError("K (number of classes) is required for out='categorical'")
        self.K = None if out == "bernoulli" else check_positive_int("K", 1 if K is None else K,
                                                                    2 if out == "categorical" else 1)
        self.P = {"bernoulli": 1, "categorical": self.K, "gaussian": 3 * (self.K or 1)}[out]
        self.context_dim = check_positive_int("context_dim", context_dim, minimum=0)
        if activation not in ref.ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ref.ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        check_bool("direct", direct)
        self.seed = check_seed(seed)
        self.in_units = D * self.K if out == "categorical" else D

        orders, degrees = self._draw_masks(order, seed)
        self.register_buffer("orders", orders.to(device))
        for l, deg in enumerate(degrees):
            self.register_buffer(f"degrees_{l}", deg.to(device))
        self.register_buffer("mask_index", torch.zeros((), dtype=torch.long, device=device))

        fk = {"device": device, "dtype": dtype}
        sizes = [self.in_units] + self.hidden
        zeros = [torch.zeros(n, dtype=torch.long) for n in sizes]
        self.layers = nn.ModuleList(MaskedLinear(a, b, za, zb, **fk)
                                    for a, b, za, zb in zip(sizes[:-1], sizes[1:], zeros[:-1], zeros[1:]))
        n_out = D * self.P
        self.output = MaskedLinear(sizes[-1], n_out, zeros[-1], torch.zeros(n_out, dtype=torch.long),
                                   strict=True, **fk)
        self.direct = (MaskedLinear(self.in_units, n_out, zeros[0], torch.zeros(n_out, dtype=torch.long),
                                    strict=True, bias=False, **fk) if direct else None)
        self.context_hidden = self.context_out = None
        if self.context_dim:
            self.context_hidden = nn.Linear(self.context_dim, self.hidden[0], bias=False, **fk)
            self.context_out = nn.Linear(self.context_dim, n_out, bias=False, **fk)
        self._apply_mask()
        self.set_backend(self.backend)  # the masked layers show the model's backend

    # ---- masks ------------------------------------------------------------
    def _draw_masks(self, order, seed):
        gen = torch.Generator().manual_seed(int(seed))
        if isinstance(order, str) and order != "random":
            raise ValueError(f"order must be None, a permutation or 'random', got {order!r}")
        fixed = None if isinstance(order, str) else check_order(order, self.D)
        orders, per_layer = [], [[] for _ in self.hidden]
        for _ in range(self.num_masks):
            o = torch.randperm(self.D, generator=gen) if fixed is None else fixed
            orders.append(o)
            for l, m in enumerate(ref.hidden_degrees(ref.input_degrees(o), self.hidden, gen)):
                per_layer[l].append(m)
        return torch.stack(orders), [torch.stack(m) for m in per_layer]

    @property
    def order(self) -> torch.Tensor:
        """The current mask set's ordering, [D]."""
        return self.orders[int(self.mask_index)]

    def degrees(self) -> list:
        """Current degrees ``[m0, m1, ..., mL]`` (m0 per input dimension)."""
        i = int(self.mask_index)
        return [ref.input_degrees(self.order)] + [getattr(self, f"degrees_{l}")[i] for l in range(len(self.hidden))]

    def _apply_mask(self) -> None:
        m = self.degrees()
        rep_in = m[0].repeat_interleave(self.K) if self.out == "categorical" else m[0]
        m_out = m[0].repeat_interleave(self.P)
        ins = [rep_in] + m[1:]
        for layer, din, dout in zip(self.layers, ins[:-1], ins[1:]):
            layer.set_degrees(din, dout)
        self.output.set_degrees(m[-1], m_out)
        if self.direct is not None:
            self.direct.set_degrees(rep_in, m_out)

    def set_mask(self, index: int) -> None:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.num_masks:
            raise ValueError(f"index must be an int in [0, {self.num_masks}), got {index!r}")
        self.mask_index.fill_(index)
        self._apply_mask()

    def next_mask(self) -> int:
        """Switch to the next mask set (cyclically); returns its index."""
        self.set_mask((int(self.mask_index) + 1) % self.num_masks)
        return int(self.mask_index)

    # ---- forward ----------------------------------------------------------
    def _check_x(self, x):
        if self.out == "bernoulli":
            return check_binary_x(x, self.D, self.device, self.dtype)
        if self.out == "categorical":
            return check_categorical_x(x, self.D, self.K, self.device)
        return check_real_x(x, self.D, self.device, self.dtype)

    def _encode(self, x):
        if self.out == "categorical":
            return F.one_hot(x, self.K).to(self.dtype).reshape(x.shape[0], self.D * self.K)
        return x

    def _layer_args(self):
        """(hidden layers, output layer, direct layer, context weights) as the functional forms take them."""
        lay = lambda m: (m.weight, m.bias, m.in_degrees, m.out_degrees)  # noqa: E731
        direct = None if self.direct is None else (self.direct.weight, self.direct.in_degrees, self.direct.out_degrees)
        ctx = None if self.context_dim == 0 else (self.context_hidden.weight, self.context_out.weight)
        return [lay(m) for m in self.layers], lay(self.output), direct, ctx

    def _params(self, x, context):
        """Per-dimension output parameters for validated x (see the class docstring)."""
        hidden, output, direct, ctx_w = self._layer_args()
        raw = fast.made_forward(self._encode(x), hidden, output, self.activation, direct, context, ctx_w,
                                backend=self._resolve())
        return ref.made_params_split(raw, self.out, self.D, self.K)

    def _sample_with(self, backend, noise, context, head):
        """``ops.made.made_sample`` of ``backend``: one pass over the weights, or D passes
        (``reference``). No gradients (see :meth:`inverse`)."""
        hidden, output, direct, ctx_w = self._layer_args()
        return fast.made_sample(hidden, output, self.order, noise, head, self.K, self.activation, direct,
                                context, ctx_w, backend=backend)

    def forward(self, x: torch.Tensor, context=None):
        x = self._check_x(x)
        return self._params(x, check_context(context, x.shape[0], self.context_dim, self.device, self.dtype))

    def _head_log_prob(self, p, x):
        return ref.HEAD_LOG_LIK[self.out](p, x)

    def log_prob(self, x: torch.Tensor, context=None, ensemble: int = 1) -> torch.Tensor:
        """log p(x) in nats, [B]; ``ensemble=k`` averages the probabilities of k mask sets
        (the current one and the next k-1), leaving the current mask unchanged."""
        x = self._check_x(x)
        context = check_context(context, x.shape[0], self.context_dim, self.device, self.dtype)
        check_positive_int("ensemble", ensemble)
        if ensemble > self.num_masks:
            raise ValueError(f"ensemble must be <= num_masks={self.num_masks}, got {ensemble}")
        if ensemble == 1:  # the current mask: no switching (keeps torch.compile's graph whole)
            return self._head_log_prob(self._params(x, context), x).sum(-1)
        start, lps = int(self.mask_index), []
        try:
            for k in range(ensemble):
                self.set_mask((start + k) % self.num_masks)
                lps.append(self._head_log_prob(self._params(x, context), x).sum(-1))
        finally:
            self.set_mask(start)
        return ref.made_ensemble_log_prob(lps)

    # ---- sampling and flows -------------------------------------------------
    def sample(self, n: int, u=None, generator=None, context=None, return_log_prob: bool = False):
        """Draw n samples; ``u [n, D]`` or ``[n, D, 2]``. The reference runs D forward passes,
        the fast backends one pass over the weights (every hidden unit computed once)."""
        u = self._uniforms(n, u, generator)
        context = check_context(context, n, self.context_dim, self.device, self.dtype)
        x, lp = self._sample_with(self._resolve("made_sample"), u, context, self.out)
        return (x, lp) if return_log_prob else x

    @property
    def uniform_trailing(self) -> tuple:
        return (2,) if self.out == "gaussian" else ()

    def _check_flow(self):
        if self.out != "gaussian" or self.K != 1:
            raise ValueError("transform/inverse need out='gaussian' with K=1 (an affine MAF layer)")

    def transform(self, x: torch.Tensor, context=None):
        """x [B, D] -> (z [B, D], log|det dz/dx| [B]) with z = (x - mu(x)) / sigma(x)."""
        self._check_flow()
        _, mu, ls = self(x, context)
        return ref.gaussian_transform(x, mu[..., 0], ls[..., 0])

    def inverse(self, z: torch.Tensor, context=None):
        """z [B, D] -> (x [B, D], log|det dx/dz| [B]): x_d = mu_d + sigma_d z_d, step by step
        (D forward passes in the reference, one pass over the weights with a fast backend).
        Differentiable w.r.t. z, context and the parameters with every backend (fast
        backends: by implicit differentiation, see ``_FastInverse``)."""
        self._check_flow()
        check_tensor("z", z)
        z = check_real_x(z, self.D, self.device, self.dtype, name="z")
        context = check_context(context, z.shape[0], self.context_dim, self.device, self.dtype)
        backend = self._resolve("made_sample")
        if backend == "reference":
            hidden, output, direct, ctx_w = self._layer_args()
            return ref.made_sample(hidden, output, self.order, z, "affine", None, self.activation, direct, context,
                                   ctx_w)
        params = [p for p in self.parameters() if p.requires_grad]
        if torch.is_grad_enabled() and (z.requires_grad or params or (context is not None and context.requires_grad)):
            return _FastInverse.apply(self, backend, z, context, *params)
        return self._sample_with(backend, z, context, "affine")

    def extra_repr(self) -> str:
        return (f"D={self.D}, hidden={self.hidden}, num_masks={self.num_masks}, out={self.out!r}, "
                f"K={self.K}, direct={self.direct is not None}, context_dim={self.context_dim}, "
                f"backend={self.backend!r}")


class _FastInverse(torch.autograd.Function):
    """``MADE.inverse`` by a one-pass sampler, with gradients by implicit differentiation.

    x* solves ``x = G(x) = mu(x) + exp(log_sigma(x)) * z`` and ``logdet = sum log_sigma(x*)``.
    For upstream (gx, gl): ``v = gx + gl * d logdet/dx``, then ``w = v + (dG/dx)^T w`` (``w^T =
    v^T (I - dG/dx)^{-1}``), solved by iterating from ``w = v``: exact after at most D rounds,
    since dG/dx is strictly triangular in the order (each round one backward pass through
    MADE; the loop stops when w no longer changes). Then ``d/d(z, context, params) =
    w^T dG/d(.) + gl * d logdet/d(.)``. The forward costs one pass over the weights; the
    backward about as much as the reference's D-pass graph.
    """

    @staticmethod
    def forward(ctx, model, backend, z, context, *params):
        ctx.model, ctx.mask_index = model, int(model.mask_index)
        x, logdet = model._sample_with(backend, z, context, "affine")
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
            return _FastInverse._backward(model, z, context, x, params, gx, gl)
        finally:
            if current != ctx.mask_index:
                model.set_mask(current)

    @staticmethod
    def _backward(model, z, context, x, params, gx, gl):
        with torch.enable_grad():
            xs = x.detach().requires_grad_()
            zz = z.detach().requires_grad_()
            cc = None if context is None else context.detach().requires_grad_()
            _, mu, ls = model._params(xs, cc)
            G = mu[..., 0] + torch.exp(ls[..., 0]) * zz
            logdet = ls[..., 0].sum(-1)
            gx = torch.zeros_like(x) if gx is None else gx
            gl = torch.zeros_like(logdet) if gl is None else gl
            v = gx + torch.autograd.grad(logdet, xs, gl, retain_graph=True)[0]
            w = v
            for _ in range(model.D):
                w_next = v + torch.autograd.grad(G, xs, w, retain_graph=True)[0]
                if torch.equal(w_next, w):
                    break
                w = w_next
            inputs = [zz] + ([] if cc is None else [cc]) + list(params)
            grads = list(torch.autograd.grad([G, logdet], inputs, [w, gl], allow_unused=True))
        dz = grads.pop(0)
        dctx = None if cc is None else grads.pop(0)
        return (None, None, dz, dctx, *grads)
