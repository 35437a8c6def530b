"""MADE: masked autoencoder for distribution estimation (docs/DESIGN.md section 4)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .._validate import (check_binary_x, check_bool, check_categorical_x, check_context, check_order,
                         check_positive_int, check_real_x, check_seed, values_pass)
from ..dispatch import Work
from ..ops import made as fast
from ..ops.masked_linear import degrees_sorted
from ..reference import heads
from ..reference import made as ref
from .base import AutoregressiveModel
from .made_shapes import activation_name, check_hidden, check_residual, drop_flow_logit_rows, flatten_batch, layer_param
from .masked_linear import MaskedLinear

OUTPUTS = ("bernoulli", "categorical", "gaussian")
SCALES = {"soft_clip": "affine", "raw": "affine_raw"}  # scale= of the affine flow (K=1) -> its sampler head
FLOW_HEAD_INIT = 1e-2


def _sync_after_load(module, _incompatible_keys) -> None:  # load_state_dict's post hook
    module._sync_mask_mirror()


class MADE(AutoregressiveModel):
    """MADE with ``num_masks`` fixed mask sets, optional direct connections and context.

    * ``out="bernoulli"``: x [B, D] in {0, 1}; ``forward -> logits [B, D]``; ``u [n, D]``.
    * ``out="categorical"``: x [B, D] int64 in [0, K), fed one-hot;
      ``forward -> logits [B, D, K]``; ``u [n, D]``.
    * ``out="gaussian"`` (K components, default 1): x real [B, D];
      ``forward -> (logits, mu, log_sigma)``, each [B, D, K]; ``u [n, D, 2]``.
      With K=1 it is an affine (MAF) layer, two outputs per dimension (mu, log sigma;
      ``logits`` are then zeros): :meth:`transform` / :meth:`inverse`,
      with ``log sigma = raw / (1 + |raw| / log(1e3))`` (``scale="soft_clip"``,
      zuko's bound: sigma within about [1e-3, 1e3]; ``forward``, ``log_prob``,
      ``sample`` use the same) or the raw output (``scale="raw"``).

    Inputs may have any leading batch shape (``x [..., D]``, unbatched ``x [D]``), and a context
    ``[..., C]`` broadcasts against it (``c [C]`` with ``x [B, D]``). ``hidden``: an int or a list of
    ints; ``activation``: a name, an ``nn`` class/instance or function of relu / elu / tanh / identity.

    ``order``: None (natural), a permutation, or ``"random"`` (each mask set draws its own ordering:
    order-agnostic training). Degrees of all mask sets are drawn once from ``seed`` (an int: the masks
    must be reproducible) and stored as buffers; :meth:`next_mask` switches to the next set (call it
    every minibatch for connectivity-agnostic training). ``context [B, context_dim]`` enters
    unmasked, into the first hidden layer and directly into the outputs.

    ``residual``: None (or False) for the plain MLP; ``"linear"`` (zuko's residual MADE) or ``"preact"``
    (nflows' residual blocks; ``True`` means this one) for a first layer ``h = W x + b`` followed, per
    entry of ``hidden``, by a block ``h <- h + W2 act(W1 g(h) + b1) + b2`` (``g`` the identity or the
    activation), with a projection where the width changes (``reference.made.layer_program``);
    ``layers`` then holds every masked layer of the program (a block's keep its input's degrees).
    """

    op = "made"

    def __init__(self, D: int, hidden, num_masks: int = 1, order=None, direct: bool = False,
                 out: str = "bernoulli", K=None, context_dim: int = 0, activation="relu",
                 seed: int = 0, backend: str = "reference", device=None, dtype=None, scale: str = "soft_clip",
                 residual=None):
        super().__init__(D, backend)
        self.hidden = check_hidden(hidden)
        self.residual = check_residual(residual)
        widths, program, self._new_degrees = ref.layer_program(self.hidden, self.residual)
        if len(widths) > ref.MAX_HIDDEN_LAYERS:
            raise ValueError(f"hidden: at most {ref.MAX_HIDDEN_LAYERS} hidden layers (a residual block counts two), "
                             f"got {len(widths)}")
        self._program = None if self.residual is None else tuple(program)
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
        # outputs per dimension; the K=1 Gaussian (the affine flow layer) has no mixture logit: mu, log sigma
        self.P = {"bernoulli": 1, "categorical": self.K, "gaussian": 3 * (self.K or 1)}[out] if not self._affine else 2
        self.context_dim = check_positive_int("context_dim", context_dim, minimum=0)
        self.activation = activation_name(activation)
        if scale not in SCALES or (scale != "soft_clip" and not self._affine):  # only the affine head has one
            raise ValueError(f"scale must be one of {tuple(SCALES)} (out='gaussian', K=1 only), got {scale!r}, {out=}")
        self.scale = scale
        check_bool("direct", direct)
        self.seed = check_seed(seed)
        self.in_units = D * self.K if out == "categorical" else D

        orders, degrees = self._draw_masks(order, seed, widths)
        self.register_buffer("orders", orders.to(device))
        for l, deg in enumerate(degrees):
            self.register_buffer(f"degrees_{l}", deg.to(device))
        self.register_buffer("mask_index", torch.zeros((), dtype=torch.long, device=device))
        self._sync_mask_mirror()
        self.register_load_state_dict_post_hook(_sync_after_load)  # module-level: the model pickles whole
        self._register_load_state_dict_pre_hook(self._drop_flow_logit_rows)

        fk = {"device": device, "dtype": dtype}
        sizes = [self.in_units] + widths
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
        if out == "gaussian" and self.K == 1:
            self._init_flow_head()
        self.set_backend(self.backend)  # the masked layers show the model's backend

    @torch.no_grad()
    def _init_flow_head(self) -> None:
        """Affine flow: the weights into mu and log sigma start at FLOW_HEAD_INIT times their default (x
        close to b_mu + exp(s(b_ls)) z: samples stay finite at D=784; every layer still gets gradients)."""
        for layer in (self.output, self.direct, self.context_out):
            if layer is not None:
                layer.weight.mul_(FLOW_HEAD_INIT)

    def _drop_flow_logit_rows(self, state_dict, prefix, *_args) -> None:  # a bound method: the model pickles
        drop_flow_logit_rows(self, state_dict, prefix)

    # ---- masks ------------------------------------------------------------
    def _draw_masks(self, order, seed, widths):
        gen = torch.Generator().manual_seed(int(seed))
        if isinstance(order, str) and order != "random":
            raise ValueError(f"order must be None, a permutation or 'random', got {order!r}")
        fixed = None if isinstance(order, str) else check_order(order, self.D)
        new = self._new_degrees  # a residual block's layers keep the degrees of the layer before
        drawn_widths = [h for h, fresh in zip(widths, new) if fresh]
        orders, per_layer = [], [[] for _ in new]
        for _ in range(self.num_masks):
            o = torch.randperm(self.D, generator=gen) if fixed is None else fixed
            orders.append(o)
            drawn = iter(ref.hidden_degrees(ref.input_degrees(o), drawn_widths, gen))
            m = None
            for l, fresh in enumerate(new):
                m = next(drawn) if fresh else m
                per_layer[l].append(m)
        return torch.stack(orders), [torch.stack(m) for m in per_layer]

    def _sync_mask_mirror(self) -> None:
        """Python copies of the mask index and orderings (torch.compile reads these, not the buffers)."""
        self._mask, self._order_lists = int(self.mask_index), self.orders.tolist()
        self._mirror_of = (self.mask_index._version, self.orders._version)

    def _mask_now(self) -> int:  # the mirror, refreshed after a buffer copy that skips set_mask (AveragedModel)
        if not torch.compiler.is_compiling() and self._mirror_of != (self.mask_index._version, self.orders._version):
            self._sync_mask_mirror()
        return self._mask

    @property
    def order(self) -> torch.Tensor:
        """The current mask set's ordering, [D]."""
        return self.orders[self._mask_now()]

    def degrees(self) -> list:
        """Current degrees ``[m0, m1, ..., mL]`` (m0 per input dimension)."""
        i = self._mask_now()
        return [ref.input_degrees(self.order)] + [getattr(self, f"degrees_{l}")[i] for l in range(len(self._new_degrees))]

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
        self._sync_mask_mirror()
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
            onehot = x[..., None] == torch.arange(self.K, device=x.device)  # F.one_hot reads values: not under vmap
            return onehot.to(self.dtype).reshape(x.shape[0], self.D * self.K)
        return x

    def _masked_layers(self) -> list:
        """The masked layers (hidden, output, direct), read from the module dict (fast)."""
        mods = self._modules
        return list(mods["layers"]) + [mods["output"]] + ([mods["direct"]] if mods.get("direct") is not None else [])

    def _layer_args(self):
        """(hidden layers, output layer, direct layer, context weights) as the functional forms take them."""
        def lay(m):
            b = m._buffers
            return layer_param(m), layer_param(m, "bias"), b["in_degrees"], b["out_degrees"]
        mods = self._modules
        d = mods.get("direct")  # None is a plain attribute, not a module
        direct = None if d is None else (layer_param(d), d._buffers["in_degrees"], d._buffers["out_degrees"])
        ctx = None if self.context_dim == 0 else (layer_param(mods["context_hidden"]), layer_param(mods["context_out"]))
        return [lay(m) for m in mods["layers"]], lay(mods["output"]), direct, ctx

    def _raw(self, x, context):
        """Raw outputs [B, D*P] for validated x."""
        hidden, output, direct, ctx_w = self._layer_args()
        backend = self._resolve(work=lambda: self.auto_work(x.shape[0]))
        return fast.made_forward(self._encode(x), hidden, output, self.activation, direct, context, ctx_w,
                                 backend=backend, program=self._program)

    def _params(self, x, context):
        """Per-dimension output parameters for validated x (see the class docstring)."""
        raw = self._raw(x, context)
        return self._bound_scale(ref.made_params_split(raw, "affine" if self._affine else self.out, self.D, self.K))

    def auto_work(self, batch: int) -> Work:
        """``dispatch.Work`` of a forward of ``batch`` rows (training: grad on, a parameter requiring it)."""
        layers = self._masked_layers()
        training = torch.is_grad_enabled() and any(p.requires_grad for m in layers for p in m.parameters(False))
        macs = batch * sum(m.in_features * m.out_features for m in layers) // len(layers)  # each layer pays a call
        if torch.compiler.is_compiling():  # the degrees' values unread (a graph break): sized as sorted
            return Work(macs, training, True, self._param().dtype)
        degrees = [d for m in layers for d in (m._buffers["in_degrees"], m._buffers["out_degrees"])]
        stamp = tuple((id(d), d._version) for d in degrees)  # the degrees change by set_mask / load_state_dict
        if getattr(self, "_sorted_memo", (None,))[0] != stamp:
            self._sorted_memo = (stamp, all(degrees_sorted(d) for d in degrees))
        return Work(macs, training, self._sorted_memo[1], self._param().dtype)

    def _param(self) -> torch.Tensor:  # device and dtype: read on every call, without walking the modules
        return layer_param(self._modules["output"])

    @property
    def _affine(self) -> bool:
        """The affine flow layer: out='gaussian' with K=1 (2 outputs per dimension: mu, log sigma)."""
        return self.out == "gaussian" and self.K == 1

    @property
    def _bounded(self) -> bool:
        """Whether the log sigma is soft-clipped: the affine layer (gaussian, K=1) with scale='soft_clip'."""
        return self._affine and self.scale == "soft_clip"

    def _bound_scale(self, p):
        """The affine layer's (logits, mu, log sigma) with log sigma soft-clipped (``scale``)."""
        if not self._bounded:
            return p
        return p[0], p[1], ref.bounded_log_sigma(p[2])

    def _sample_with(self, backend, noise, context, head):
        """``ops.made.made_sample`` of ``backend``: one pass over the weights, or D passes
        (``reference``). No gradients (see :meth:`inverse`)."""
        hidden, output, direct, ctx_w = self._layer_args()
        return fast.made_sample(hidden, output, self.order, noise, head, self.K, self.activation, direct,
                                context, ctx_w, backend=backend, program=self._program)

    def _flat(self, x, context, name="x"):
        """x [..., D], context [..., C] or [C] -> validated (x [B, D], context [B, C] or None, batch shape)."""
        x, context, lead = flatten_batch(x, context, self.D, self.context_dim, name)
        x = check_real_x(x, self.D, self.device, self.dtype, name=name) if name == "z" else self._check_x(x)
        return x, check_context(context, x.shape[0], self.context_dim, self.device, self.dtype), lead

    def forward(self, x: torch.Tensor, context=None):
        """Per-dimension parameters with x's leading batch shape (see the class docstring)."""
        x, context, lead = self._flat(x, context)
        p = self._params(x, context)
        if isinstance(p, tuple):
            return tuple(t.reshape(*lead, *t.shape[1:]) for t in p)
        return p.reshape(*lead, *p.shape[1:])

    def _head_log_prob(self, p, x):  # log p(x) [B]; the Bernoulli head fused (ops/made/bernoulli_head.py)
        fused = self.out == "bernoulli" and self._fused_heads
        return fast.bernoulli_log_prob(p, x) if fused else ref.HEAD_LOG_LIK[self.out](p, x).sum(-1)

    def log_prob(self, x: torch.Tensor, context=None, ensemble: int = 1) -> torch.Tensor:
        """log p(x) in nats, [B]; ``ensemble=k`` averages the probabilities of k mask sets (the current
        one and the next k-1; eagerly under torch.compile), leaving the current mask unchanged."""
        x, context, lead = self._flat(x, context)
        check_positive_int("ensemble", ensemble)
        if ensemble > self.num_masks:
            raise ValueError(f"ensemble must be <= num_masks={self.num_masks}, got {ensemble}")
        if ensemble == 1:  # the current mask: no switching (keeps torch.compile's graph whole)
            return self._head_log_prob(self._params(x, context), x).reshape(lead)
        return self._ensemble_log_prob(x, context, ensemble).reshape(lead)

    @torch.compiler.disable(reason="MADE.log_prob(ensemble>1) switches the mask sets in place")
    def _ensemble_log_prob(self, x, context, ensemble: int) -> torch.Tensor:  # compiled, backward saw changed degrees
        start, lps = int(self.mask_index), []
        try:
            for k in range(ensemble):
                self.set_mask((start + k) % self.num_masks)
                lps.append(self._head_log_prob(self._params(x, context), x))
        finally:
            self.set_mask(start)
        return ref.made_ensemble_log_prob(lps)

    # ---- sampling and flows -------------------------------------------------
    def sample(self, n: int, u=None, generator=None, context=None, return_log_prob: bool = False):
        """Draw n samples; ``u [n, D]`` or ``[n, D, 2]``. The reference runs D forward passes,
        the fast backends one pass over the weights (every hidden unit computed once)."""
        u = self._uniforms(n, u, generator)
        if isinstance(context, torch.Tensor) and context.dim() == 1:  # one context for all n samples
            context = context.expand(n, -1)
        context = check_context(context, n, self.context_dim, self.device, self.dtype)
        if self._affine:  # the affine layer (K=1): its inverse at z = Phi^-1(u[..., 1])
            x, lp = self._sample_affine(u, context)
        else:
            x, lp = self._sample_with(self._resolve("made_sample"), u, context, self.out)
        return (x, lp) if return_log_prob else x

    @torch.no_grad()
    def _sample_affine(self, u, context):
        """(x, log p(x)) of the K=1 layer from uniforms [n, D, 2]: z = Phi^-1(clamped u[..., 1])
        as the mixture head draws it, x = inverse(z), log p(x) = log N(z) - log|dx/dz|."""
        u1 = u[..., 1].float() if u.dtype in (torch.float16, torch.bfloat16) else u[..., 1]  # no half ndtri on CPU
        z = torch.special.ndtri(u1.clamp(heads.U_EPS, 1 - heads.U_EPS)).to(self.dtype)
        x, logdet = self._inverse_flat(z, context)
        return x, (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).sum(-1) - logdet

    @property
    def uniform_trailing(self) -> tuple:
        return (2,) if self.out == "gaussian" else ()

    def _check_flow(self):
        if self.out != "gaussian" or self.K != 1:
            raise ValueError("transform/inverse need out='gaussian' with K=1 (an affine MAF layer)")

    @property
    def affine_head(self) -> str:
        """The sampler head of the affine flow: ``"affine"`` (soft-clipped log sigma) or ``"affine_raw"``."""
        return SCALES[self.scale]

    def transform(self, x: torch.Tensor, context=None):
        """x [..., D] -> (z [..., D], log|det dz/dx| [...]) with z = (x - mu(x)) / sigma(x)."""
        self._check_flow()
        x, context, lead = self._flat(x, context)
        raw = self._raw(x, context)  # [B, 2D]: mu and raw log sigma per dimension
        if not self._fused_heads:
            z, logdet = ref.affine_transform(x, raw, self._bounded)
        else:  # the same values and gradients in one autograd node (ops/made/affine_density.py)
            z, logdet = fast.affine_density(x, raw, self._bounded)
        return (z, logdet) if len(lead) == 1 else (z.reshape(*lead, self.D), logdet.reshape(lead))

    def inverse(self, z: torch.Tensor, context=None):
        """z [..., D] -> (x [..., D], log|det dx/dz| [...]): x_d = mu_d + sigma_d z_d, step by step
        (D forward passes in the reference, one pass over the weights with a fast backend).
        Differentiable w.r.t. z, context and the parameters with every backend (fast
        backends: by implicit differentiation in one reverse sweep, see ``ops/made/affine_op.py``)."""
        self._check_flow()
        z, context, lead = self._flat(z, context, name="z")
        x, logdet = self._inverse_flat(z, context)
        return x.reshape(*lead, self.D), logdet.reshape(lead)

    def _inverse_flat(self, z, context):
        backend = self._resolve("made_sample")
        if backend == "reference":
            hidden, output, direct, ctx_w = self._layer_args()
            values_pass(lambda: fast.check_finite_parameters(hidden, output, direct, ctx_w) or True)  # as every sampler
            return ref.made_sample(hidden, output, self._order_lists[self._mask_now()], z, self.affine_head, None,
                                   self.activation, direct, context, ctx_w, program=self._program)
        wants_grad = torch.is_grad_enabled() and (z.requires_grad or any(p.requires_grad for p in self.parameters())
                                                  or (context is not None and context.requires_grad))
        if wants_grad or torch.compiler.is_compiling():  # one custom op, with its autograd
            return self._sample_op(backend, z, context)
        return self._sample_with(backend, z, context, self.affine_head)

    def _sample_op(self, backend, z, context):
        from ..ops.made.affine_op import encode_program, made_affine_sample
        hidden, output, direct, ctx_w = self._layer_args()
        layers = list(hidden) + [output]
        return made_affine_sample([t[0] for t in layers], [t[1] for t in layers], [t[2] for t in layers],
                                  [t[3] for t in layers], [] if direct is None else list(direct), self.order, z,
                                  context, [] if ctx_w is None else list(ctx_w), self.affine_head,
                                  self.activation, backend, encode_program(self._program))

    def extra_repr(self) -> str:
        return (f"D={self.D}, hidden={self.hidden}, num_masks={self.num_masks}, out={self.out!r}, "
                f"K={self.K}, direct={self.direct is not None}, context_dim={self.context_dim}, "
                f"backend={self.backend!r}" + (f", scale={self.scale!r}" if self.out == "gaussian" else "")
                + (f", residual={self.residual!r}" if self.residual else ""))
