"""Row builders: for each op family and size, the reference forms, torch.compile and kernels.

``SIZES[family]`` holds the headline sizes, the sweep (``--sweep``) and the tiny
sizes of ``--quick``; ``ROW_BUILDERS`` maps each family to ``(cfg, size) -> [Row]``.
Kernel rows come from :func:`kernel_skip_reasons` (``armodel_fast.explain``),
so a backend that cannot run here is listed with the reason.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import rows_flows, rows_variants
from .core import COMPILE_AUTO_MAX_D, BenchConfig, Row

_nade = lambda B, D, H: {"B": B, "D": D, "H": H}  # noqa: E731
_ml = lambda B, D, H, layer="input": {"B": B, "D": D, "H": H, "layer": layer}  # noqa: E731
_made = lambda B, D, H: {"B": B, "D": D, "hidden": (H, H)}  # noqa: E731
_made_n = lambda n, D, H: {"n": n, "D": D, "hidden": (H, H)}  # noqa: E731

SIZES = {
    "nade": {"headline": [_nade(256, 784, 500)],
             "sweep": [_nade(256, D, H) for D in (64, 196, 784) for H in (128, 500)],
             "quick": [_nade(4, 8, 4)], "quick_sweep": [_nade(4, 8, 4), _nade(4, 12, 6)]},
    "masked_linear": {"headline": [_ml(128, 784, 500), _ml(128, 784, 2000)],
                      "sweep": [_ml(128, 196, 500), _ml(128, 784, 500), _ml(128, 784, 2000),
                                _ml(128, 784, 500, "hidden"), _ml(128, 784, 2000, "hidden"),
                                _ml(512, 784, 2000)],
                      "quick": [_ml(4, 8, 16)], "quick_sweep": [_ml(4, 8, 16), _ml(4, 8, 16, "hidden")]},
    "made": {"headline": [_made(128, 784, 2000)],
             "sweep": [_made(128, 196, 500), _made(128, 784, 500), _made(128, 784, 2000)],
             "quick": [_made(4, 8, 16)], "quick_sweep": [_made(4, 8, 16), _made(4, 12, 16)]},
    "made sample": {"headline": [_made_n(16, 784, 2000)],
                    "sweep": [_made_n(16, 196, 500), _made_n(16, 784, 500), _made_n(16, 784, 2000)],
                    "quick": [_made_n(4, 8, 16)], "quick_sweep": [_made_n(4, 8, 16), _made_n(4, 12, 16)]},
    **rows_variants.SIZES,
    **rows_flows.SIZES,
}


def sizes(family: str, cfg: BenchConfig) -> list:
    """The sizes ``cfg`` asks for (``--B/--D/--H`` override every one), without duplicates."""
    table = SIZES[family]
    prefix = "quick" if cfg.quick else ""
    chosen = table[prefix + "_sweep" if prefix else "sweep"] if cfg.sweep else table[prefix or "headline"]
    out = []
    for s in chosen:
        s = dict(s)
        if cfg.B is not None and "B" in s:
            s["B"] = cfg.B
        if cfg.D is not None:
            s["D"] = cfg.D
        if cfg.H is not None:
            s["H" if "H" in s else "hidden"] = cfg.H if "H" in s else (cfg.H, cfg.H)
        if s not in out:
            out.append(s)
    return out


def size_label(s: dict) -> str:
    if "layer" in s:
        n_in = s["D"] if s["layer"] == "input" else s["H"]
        return f"B={s['B']} {n_in}->{s['H']}" + (" hidden layer" if s["layer"] == "hidden" else "")
    parts = [f"{k}={v}" for k, v in s.items() if k != "hidden"]
    if "hidden" in s:
        parts.append("hidden=" + "x".join(map(str, s["hidden"])))
    return " ".join(parts)


def kernel_skip_reasons(op: str, device) -> dict:
    """``{backend: None or why it cannot run op}`` for the non-reference backends,
    read from :func:`armodel_fast.explain` (lines ``name: yes`` / ``name: no - why``)."""
    from .._backend import explain
    reasons = {}
    for line in explain(op, device).splitlines():
        name, _, verdict = line.partition(": ")
        if name != "reference":
            reasons[name] = None if verdict == "yes" else verdict.removeprefix("no - ")
    return reasons


def _compile_skip(cfg: BenchConfig, loop_steps: int = 0):
    """Why compiled rows are skipped (None: run them). ``loop_steps``: the Python loop
    torch.compile would unroll (0: none), only compiled in auto mode when short."""
    if cfg.compile == "off":
        return "--no-compile"
    if cfg.compile == "auto" and loop_steps > COMPILE_AUTO_MAX_D:
        return (f"compiling the {loop_steps}-step loop takes minutes; auto mode compiles it only "
                f"at D <= {COMPILE_AUTO_MAX_D} (pass --compile)")
    return None


def _forward(fn):
    def run():
        with torch.no_grad():
            return fn()
    return run


def _forward_backward(fn, zero):
    """One call: forward, ``.sum().backward()``, then ``zero()`` drops the gradients."""
    def run():
        fn().sum().backward()
        zero()
    return run


def _zero_grads(*tensors):
    def zero():
        for t in tensors:
            t.grad = None
    return zero


# ---------------------------------------------------------------------------- NADE
def _nade_setup(cfg, s, backend="reference"):
    """A NADE module (parameters from ``cfg.seed``), x [B, D] in {0, 1} and u [B, D]."""
    from ..nn import NADE

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = NADE(s["D"], s["H"]).to(cfg.device)
        x = torch.bernoulli(torch.full((s["B"], s["D"]), 0.5)).to(cfg.device)
        u = torch.rand(s["B"], s["D"]).to(cfg.device)
    if backend != "reference":
        model.set_backend(backend)
    return model, x, u


def _nade_log_prob_maker(s, form, grad, compiled=False):
    def make(cfg):
        from ..reference.nade import nade_log_prob
        model, x, _ = _nade_setup(cfg, s)
        f = functools.partial(nade_log_prob, form=form)
        if compiled:
            f = torch.compile(f)
        fn = lambda: f(x, *model.params())  # noqa: E731
        return _forward_backward(fn, lambda: model.zero_grad(set_to_none=True)) if grad else _forward(fn)
    return make


def _nade_sample_maker(s, compiled=False):
    def make(cfg):
        from ..reference.nade import nade_sample
        model, _, u = _nade_setup(cfg, s)
        f = torch.compile(nade_sample) if compiled else nade_sample
        return _forward(lambda: f(*model.params(), u))
    return make


def _nade_kernel_maker(s, backend, what):
    def make(cfg):
        model, x, u = _nade_setup(cfg, s, backend)
        if what == "sample":
            return _forward(lambda: model.sample(s["B"], u=u))
        fn = lambda: model.log_prob(x)  # noqa: E731
        zero = lambda: model.zero_grad(set_to_none=True)  # noqa: E731
        return _forward_backward(fn, zero) if what == "fwd+bwd" else _forward(fn)
    return make


def nade_rows(cfg: BenchConfig, s: dict) -> list:
    loop_skip = _compile_skip(cfg, s["D"])
    kernels = kernel_skip_reasons("nade", cfg.device)
    rows = []
    for what, grad in (("fwd", False), ("fwd+bwd", True)):
        op = f"nade log_prob {what}"
        rows += [Row(op, "reference loop", _nade_log_prob_maker(s, "loop", grad)),
                 Row(op, "reference cumsum", _nade_log_prob_maker(s, "cumsum", grad)),
                 Row(op, "torch.compile loop", _nade_log_prob_maker(s, "loop", grad, compiled=True),
                     skip=loop_skip, kind="compiled", warmup=2),
                 Row(op, "torch.compile cumsum", _nade_log_prob_maker(s, "cumsum", grad, compiled=True),
                     skip=_compile_skip(cfg), kind="compiled", warmup=2)]
        rows += [Row(op, name, _nade_kernel_maker(s, name, what), skip=why, kind="kernel")
                 for name, why in kernels.items()]
    rows += [Row("nade sample", "reference loop", _nade_sample_maker(s)),
             Row("nade sample", "torch.compile loop", _nade_sample_maker(s, compiled=True), skip=loop_skip,
                 kind="compiled", warmup=2)]
    rows += [Row("nade sample", name, _nade_kernel_maker(s, name, "sample"), skip=why, kind="kernel")
             for name, why in kernels.items()]
    return rows


# ---------------------------------------------------------------------------- masked_linear
def _ml_setup(cfg, s):
    """x [B, in] (requires grad), W [out, in], b [out] and MADE degrees of a random order:
    the input layer D -> H (``layer="input"``) or the hidden layer H -> H after it."""
    from ..reference.made import hidden_degrees, input_degrees
    from ..reference.masked_linear import degree_mask

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        m0 = input_degrees(torch.randperm(s["D"]))
        m1, m2 = hidden_degrees(m0, [s["H"], s["H"]], torch.Generator().manual_seed(cfg.seed))
        din, dout = (m0, m1) if s["layer"] == "input" else (m1, m2)
        w = torch.randn(dout.numel(), din.numel()) / din.numel() ** 0.5
        b = torch.randn(dout.numel()) * 0.1
        x = torch.randn(s["B"], din.numel())
    dev = cfg.device
    w, b, x = (t.to(dev).requires_grad_(True) for t in (w, b, x))
    mask = degree_mask(din, dout, False, w.dtype).to(dev)
    return x, w, b, din.to(dev), dout.to(dev), mask


def _ml_maker(s, provider, grad):
    def make(cfg):
        x, w, b, din, dout, mask = _ml_setup(cfg, s)
        if provider == "unmasked":
            fn = lambda: F.linear(x, w, b)  # noqa: E731
        elif provider in ("dense", "compiled"):
            f = (lambda x, w, m, b: F.linear(x, w * m, b))  # noqa: E731
            f = torch.compile(f) if provider == "compiled" else f
            fn = lambda: f(x, w, mask, b)  # noqa: E731
        else:
            from ..ops.masked_linear import masked_linear
            bump = torch.autograd.graph.increment_version if grad else (lambda t: None)

            def fn():
                bump(w)  # training: the weight changed since the last call (cache miss)
                return masked_linear(x, w, b, din, dout, False, backend=provider)
        return _forward_backward(fn, _zero_grads(x, w, b)) if grad else _forward(fn)
    return make


def masked_linear_rows(cfg: BenchConfig, s: dict) -> list:
    kernels = kernel_skip_reasons("masked_linear", cfg.device)
    rows = []
    for what, grad in (("fwd", False), ("fwd+bwd", True)):
        op = f"masked_linear {what}"
        info = ("weight version bumped before each call, as after an optimizer step: prepared weights rebuilt"
                if grad else "weights unchanged between calls: prepared-weight cache warm")
        rows += [Row(op, "unmasked F.linear", _ml_maker(s, "unmasked", grad), kind="baseline"),
                 Row(op, "dense W*M", _ml_maker(s, "dense", grad)),
                 Row(op, "torch.compile dense W*M", _ml_maker(s, "compiled", grad), skip=_compile_skip(cfg),
                     kind="compiled", warmup=2)]
        rows += [Row(op, name, _ml_maker(s, name, grad), skip=why, kind="kernel", info=info)
                 for name, why in kernels.items()]
    return rows


# ---------------------------------------------------------------------------- MADE
def _made_setup(cfg, s, backend="reference"):
    """``af.MADE(D, hidden)`` (weights from ``cfg.seed``), x [B, D] in {0, 1} or u [n, D]."""
    from ..nn import MADE

    n = s.get("B", s.get("n"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = MADE(s["D"], list(s["hidden"]), seed=cfg.seed).to(cfg.device)
        x = torch.bernoulli(torch.full((n, s["D"]), 0.5)).to(cfg.device)
        u = torch.rand(n, s["D"]).to(cfg.device)
    if backend != "reference":
        model.set_backend(backend)
    return model, x, u


def _made_fwd_maker(s, provider):
    def make(cfg):
        from ..reference import made as ref
        from ..reference.masked_linear import degree_mask

        eager = provider in ("reference", "stored", "compiled", "unmasked")
        model, x, _ = _made_setup(cfg, s, "reference" if eager else provider)
        hidden, output, _, _ = model._layer_args()
        if provider == "compiled":
            f = torch.compile(ref.made_forward)
            return _forward(lambda: f(x, hidden, output, model.activation))
        if provider in ("stored", "unmasked"):
            layers = [(w, b, None if provider == "unmasked" else degree_mask(din, dout, i == len(hidden), w.dtype))
                      for i, (w, b, din, dout) in enumerate(hidden + [output])]

            def mlp():
                h = x
                for i, (w, b, m) in enumerate(layers):
                    h = F.linear(h, w if m is None else w * m, b)
                    h = torch.relu(h) if i < len(layers) - 1 else h
                return h
            return _forward(mlp)
        return _forward(lambda: model(x))
    return make


def _made_sample_maker(s, provider):
    def make(cfg):
        model, _, u = _made_setup(cfg, s, "reference" if provider == "compiled" else provider)
        n = u.shape[0]
        if provider != "compiled":
            return _forward(lambda: model.sample(n, u=u))
        from ..reference import heads
        from ..reference import made as ref
        hidden, output, _, _ = model._layer_args()
        f = torch.compile(ref.made_forward)
        x0 = torch.zeros(n, s["D"], device=u.device, dtype=u.dtype)
        return _forward(lambda: ref.sample_by_passes(lambda x: f(x, hidden, output, model.activation),
                                                     heads.bernoulli_sample, heads.bernoulli_log_prob,
                                                     model.order, x0, u))
    return make


def made_rows(cfg: BenchConfig, s: dict) -> list:
    kernels = kernel_skip_reasons("made", cfg.device)
    op = "made fwd"
    rows = [Row(op, "reference (af.MADE)", _made_fwd_maker(s, "reference")),
            Row(op, "stored masks W*M", _made_fwd_maker(s, "stored")),
            Row(op, "torch.compile reference", _made_fwd_maker(s, "compiled"), skip=_compile_skip(cfg),
                kind="compiled", warmup=2),
            Row(op, "unmasked MLP", _made_fwd_maker(s, "unmasked"), kind="baseline")]
    rows += [Row(op, name, _made_fwd_maker(s, name), skip=why, kind="kernel",
                 info="weights unchanged between calls: prepared-weight cache warm")
             for name, why in kernels.items()]
    return rows


def made_sample_rows(cfg: BenchConfig, s: dict) -> list:
    kernels = kernel_skip_reasons("made", cfg.device)
    op = "made sample"
    rows = [Row(op, "reference D-pass", _made_sample_maker(s, "reference"), repeats=1,
                info=f"{s['D']} forward passes; 1 timed call"),
            Row(op, "torch.compile per-pass fwd", _made_sample_maker(s, "compiled"), skip=_compile_skip(cfg),
                kind="compiled", repeats=1, info=f"{s['D']} compiled forward passes; 1 timed call")]
    rows += [Row(op, name, _made_sample_maker(s, name), skip=why, kind="kernel")
             for name, why in kernels.items()]
    return rows


ROW_BUILDERS = {"nade": nade_rows, "categorical_nade": rows_variants.variant_rows("categorical_nade"),
                "rnade": rows_variants.variant_rows("rnade"), "masked_linear": masked_linear_rows,
                "made": made_rows, "made sample": made_sample_rows, "flows": rows_flows.flows_rows}
OPT_IN_FAMILIES = {"flows"}  # run only when asked for (--family flows): the peers' D-pass rows take minutes


def all_rows(cfg: BenchConfig) -> list:
    """Every row ``cfg`` selects, op family by family, size by size. ``cfg.filter`` keeps
    the rows whose ``"op provider"`` contains it, plus the eager reference rows of the
    same op and size (the ratio needs them)."""
    rows = []
    for family, build in ROW_BUILDERS.items():
        if family not in cfg.families and (cfg.families or family in OPT_IN_FAMILIES):
            continue
        for s in sizes(family, cfg):
            group = build(cfg, s)
            if not any(row.matches(cfg.filter) for row in group):
                continue
            ops = {row.op for row in group if row.matches(cfg.filter)}
            for row in group:
                if row.matches(cfg.filter) or (row.reference and row.op in ops):
                    row.size, row.size_label = s, size_label(s)
                    rows.append(row)
    return rows
