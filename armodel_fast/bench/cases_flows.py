"""Rows of the ``flows`` family: a 5-layer MAF in zuko, nflows and pyro against the same
flow built from ``armodel_fast.flows`` (one changed import line), in one run.

Ops: ``train step`` (-log_prob of B points, backward, Adam step), ``sample n`` (no
gradients: the peers run D passes of each layer's network, ours the one-pass sampler),
``rsample n`` (differentiable sampling: sample, ``.square().sum().backward()``).
Each peer row is a ratio reference; our rows name the library whose API they use.
Peer rows whose cost is far out of reach on a CPU are skipped with the estimate.
"""
from __future__ import annotations

import importlib.util
import os

import torch

from .core import BenchConfig, Family, Row, kernel_skip_reasons

LIBRARIES = ("zuko", "nflows", "pyro")
LAYERS = 5
_flow = lambda D, H, n, B=256: {"D": D, "hidden": (H, H), "n": n, "B": B}  # noqa: E731

# D=784 at hidden 256 for zuko and nflows and at 1024 for pyro too (pyro refuses hidden < D)
SIZES = {"flows": {"headline": [_flow(64, 256, 16), _flow(64, 256, 1024), _flow(784, 256, 16),
                                _flow(784, 256, 1024), _flow(784, 1024, 16)],
                   "sweep": [_flow(64, 256, 16), _flow(64, 256, 1024), _flow(784, 512, 16), _flow(784, 512, 1024),
                             _flow(784, 1024, 16)],
                   "quick": [_flow(6, 8, 4, 8)], "quick_sweep": [_flow(6, 8, 4, 8), _flow(8, 8, 16, 8)]}}

# Peer D-pass sampling estimated beyond this many flops is skipped (tens of minutes on a
# CPU; 430 GFLOP, pyro at D=784 hidden 1024 n=16, took 14 s on one core).
PEER_SAMPLE_FLOP_LIMIT = 500e9
# Peer differentiable sampling beyond this share of the machine's memory is skipped: each
# of the D passes saves its masked weights (W * M) for the backward (pyro at D=784 hidden
# 1024: ~55 GB, killed for lack of memory on a 24 GiB machine).
PEER_RSAMPLE_MEMORY_SHARE = 0.5


def _weights(s: dict) -> int:
    """Weights of one layer's network: D -> h1 -> h2 -> 2D."""
    D, (h1, h2) = s["D"], s["hidden"]
    return D * h1 + h1 * h2 + h2 * 2 * D


def peer_sample_flops(s: dict) -> float:
    """n rows x D passes x LAYERS networks x 2 flops per weight."""
    return s["n"] * s["D"] * LAYERS * 2.0 * _weights(s)


def peer_rsample_bytes(s: dict) -> float:
    """What the peers' differentiable sampling keeps for its backward: D passes x LAYERS masked
    weight copies (fp32); the activations are small beside them."""
    return s["D"] * LAYERS * 4.0 * _weights(s)


_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def _memory_bytes() -> float:
    """The memory this process may use: the machine's, or its container's limit where lower
    (cgroup v2 or v1); infinity where neither can be read."""
    limits = []
    try:
        limits.append(float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")))
    except (ValueError, OSError, AttributeError):
        pass
    for path in _CGROUP_LIMITS:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():  # "max": no limit
            limits.append(float(text))
    return min(limits, default=float("inf"))


def _module_name(lib: str) -> str:
    return "pyro" if lib == "pyro" else lib


def build(lib: str, fast: bool, s: dict, backend: str = "auto"):
    """(flow object, log_prob(x), sample(n), parameters) of a 5-layer MAF in ``lib``'s API."""
    D, hidden = s["D"], list(s["hidden"])
    kw = {"backend": backend} if fast else {}
    if lib == "zuko":
        mod = importlib.import_module("armodel_fast.flows.zuko") if fast else importlib.import_module("zuko.flows")
        flow = mod.MAF(D, 0, transforms=LAYERS, hidden_features=hidden, **kw)
        return flow, lambda x: flow().log_prob(x), lambda n: flow().rsample((n,))
    if lib == "nflows":
        if fast:
            mod = importlib.import_module("armodel_fast.flows.nflows")
            flow = mod.MaskedAutoregressiveFlow(D, hidden[0], LAYERS, len(hidden) - 1, use_residual_blocks=False, **kw)
        else:  # nflows' MADE: a first layer then num_blocks more, so len(hidden) - 1 gives zuko's and pyro's net
            mod = importlib.import_module("nflows.flows.autoregressive")
            flow = mod.MaskedAutoregressiveFlow(D, hidden[0], LAYERS, len(hidden) - 1, use_residual_blocks=False)
        return flow, flow.log_prob, flow.sample
    dist = importlib.import_module("pyro.distributions")
    if fast:
        helper = importlib.import_module("armodel_fast.flows.pyro").affine_autoregressive
        layers = [helper(D, hidden_dims=hidden, **kw) for _ in range(LAYERS)]
    else:
        helper = importlib.import_module("pyro.distributions.transforms").affine_autoregressive
        layers = [helper(D, hidden_dims=hidden) for _ in range(LAYERS)]
    base = dist.Normal(torch.zeros(D), torch.ones(D)).to_event(1)
    flow = dist.TransformedDistribution(base, [t.inv for t in layers])  # MAF: density one pass, sampling D
    module = torch.nn.ModuleList(layers)

    def fresh(fn):  # pyro's transforms cache the last (x, y): each timed call starts without it
        def run(arg):
            for t in layers:
                t.clear_cache()
            return fn(arg)
        return run
    return module, fresh(flow.log_prob), fresh(lambda n: flow.rsample((n,)))


def _maker(lib: str, fast: bool, s: dict, what: str):
    def make(cfg: BenchConfig):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            module, log_prob, sample = build(lib, fast, s)
            x = torch.randn(s["B"], s["D"])
        params = [p for p in module.parameters()]
        if what == "train step":
            opt = torch.optim.Adam(params, lr=1e-4)

            def step():
                opt.zero_grad(set_to_none=True)
                (-log_prob(x).mean()).backward()
                opt.step()
            return step
        if what == "sample":
            def draw():
                with torch.no_grad():
                    return sample(s["n"])
            return draw

        def rsample():
            sample(s["n"]).square().sum().backward()
            for p in params:
                p.grad = None
        return rsample
    return make


def _refuses(lib: str, s: dict) -> bool:
    """Whether ``lib`` cannot build this flow at all (pyro: hidden sizes below D)."""
    return lib == "pyro" and min(s["hidden"]) < s["D"]


def _peer_skip(lib: str, s: dict, what: str):
    if importlib.util.find_spec(_module_name(lib)) is None:
        return f"{lib} is not installed (pip install 'armodel-fast[{lib}]')"
    if _refuses(lib, s):
        return (f"pyro's AutoRegressiveNN refuses hidden sizes below D={s['D']} (hidden={list(s['hidden'])}): "
                "a case with hidden >= D runs it")
    if what != "train step" and peer_sample_flops(s) > PEER_SAMPLE_FLOP_LIMIT:
        return (f"{LAYERS} x {s['D']} passes of the network on {s['n']} rows: ~{peer_sample_flops(s) / 1e12:.1f} "
                "TFLOP, too long for the bench on a CPU (run a smaller n)")
    memory = _memory_bytes() if what == "rsample" else None
    if memory is not None and peer_rsample_bytes(s) > PEER_RSAMPLE_MEMORY_SHARE * memory:
        return (f"its backward keeps the masked weights of all {LAYERS} x {s['D']} passes: "
                f"~{peer_rsample_bytes(s) / 1e9:.0f} GB, more than half of this machine's {memory / 2**30:.0f} GiB")
    return None


def flows_rows(cfg: BenchConfig, s: dict) -> list:
    fast_ok = any(why is None for why in kernel_skip_reasons("made_sample", cfg.device).values())
    rows = []
    for what in ("train step", "sample", "rsample"):
        if what == "train step" and s["n"] > 16:
            continue  # the training step does not depend on n: once per D (with the small n)
        op = f"MAF x{LAYERS} {what}" + ("" if what == "train step" else f" n={s['n']}")
        for lib in LIBRARIES:
            peer_skip = _peer_skip(lib, s, what)
            slow = what != "train step"  # D passes per layer: seconds to minutes per call, one timed call
            rows.append(Row(op, lib, _maker(lib, False, s, what), skip=peer_skip, repeats=1 if slow else None,
                            warmup=0 if slow and s["D"] > 100 else 1))
            ours_skip = None if fast_ok else "no fast made_sample backend here"
            if importlib.util.find_spec(_module_name(lib)) is None or (peer_skip and (what == "rsample"
                                                                                      or _refuses(lib, s))):
                ours_skip = f"nothing to compare with: {lib}'s own row is skipped ({peer_skip})"
            # ours is cheap enough for the default repeats after a warm-up (one cold call measured
            # 490 ms against 148 ms warm for a D=784 rsample right after the peer's 49 s one)
            rows.append(Row(op, f"armodel_fast.flows.{lib}", _maker(lib, True, s, what), skip=ours_skip,
                            kind="kernel", info="backend='auto'"))
    return rows


FAMILIES = {"flows": Family(SIZES["flows"], flows_rows)}
