"""What a benchmark case is: the run's config, a :class:`Row`, an op :class:`Family`, and
the helpers every ``cases_<op>.py`` builds its rows with.

This module imports nothing else from :mod:`armodel_fast.bench` (the cases files,
the registry :mod:`.rows`, the run loop :mod:`.measure` and :mod:`.report` import it).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..ops.masked_linear.launchers import EVAL_MIN_ROWS

COMPILE_AUTO_MAX_D = 32  # torch.compile unrolls a D-step loop: minutes beyond small D
KINDS = ("reference", "baseline", "compiled", "kernel")
SIZE_SETS = ("headline", "sweep", "quick", "quick_sweep")
# the note of the kernel rows without a graph (the masked layers' evaluation: ops/masked_linear/launchers.py)
EVAL_INFO = ("weights unchanged between calls: prepared-weight cache warm where used (unsorted degrees, "
             f"under {EVAL_MIN_ROWS} rows, no AVX-512)")


@dataclass
class BenchConfig:
    """What to run. ``B``/``D``/``H`` of None use each op's own sizes (headline, or
    the sweep with ``sweep``, or tiny ones with ``quick``); a value given replaces
    that dimension in every size of every op (``H``: MADE's hidden sizes [H, H])."""
    B: Optional[int] = None
    D: Optional[int] = None
    H: Optional[int] = None
    repeats: int = 5
    device: Optional[str] = None  # None: cuda if available, else cpu
    seed: int = 0
    threads: Optional[int] = None  # torch.set_num_threads in each row (None: torch's default)
    compile: str = "auto"  # "auto" (loops only when D <= COMPILE_AUTO_MAX_D), "on", "off"
    memory: bool = True    # subprocess per row with a peak-memory reading
    filter: Optional[str] = None
    sweep: bool = False
    quick: bool = False
    families: tuple = ()  # op families to run (keys of rows.FAMILIES); empty: all
    interleave: bool = False  # time the providers of one op and size in turns (see measure.run_bench)
    profile: bool = False  # also profile one call of each kernel row (measure.profile_call)
    allocator: str = "pinned"  # "pinned": glibc malloc thresholds fixed before timing (measure.pin_allocator)

    def __post_init__(self):
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.compile not in ("auto", "on", "off"):
            raise ValueError(f"compile must be 'auto', 'on' or 'off', got {self.compile!r}")
        if self.allocator not in ("pinned", "default"):
            raise ValueError(f"allocator must be 'pinned' or 'default', got {self.allocator!r}")
        if self.profile and self.interleave:
            raise ValueError("--profile profiles the rows one by one: it does not run with --interleave")


@dataclass
class Row:
    """One provider of one op at one size. ``make(cfg)`` builds the inputs and returns
    the zero-argument callable to time; ``skip`` is why the row is not run instead.

    ``kind``: ``reference`` (an eager reference form: the ratio's baseline is the
    fastest of them for the same op and size), ``baseline`` (shown for scale, e.g.
    an unmasked layer, but not a ratio reference), ``compiled`` or ``kernel``.
    """
    op: str
    provider: str
    make: Optional[Callable] = None
    skip: Optional[str] = None
    kind: str = "reference"
    size: dict = field(default_factory=dict)
    size_label: str = ""
    warmup: int = 1
    repeats: Optional[int] = None  # at most this many timed calls (slow rows); None: cfg.repeats
    info: Optional[str] = None     # a remark printed with the result (how the row was run)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def reference(self) -> bool:
        return self.kind == "reference"

    @property
    def key(self) -> str:
        return f"{self.op} [{self.size_label}] | {self.provider}"

    def matches(self, text: Optional[str]) -> bool:
        """``--filter``: the text occurs in ``"op provider"``."""
        return not text or text in f"{self.op} {self.provider}"


@dataclass(frozen=True)
class Family:
    """An op family (a ``--family`` name): its sizes and its row builder.

    ``sizes``: ``{"headline": [size, ...], "sweep": [...], "quick": [...],
    "quick_sweep": [...]}``, a size being a dict of dimensions (``B``, ``D``, ``H``,
    ``hidden``, ...); ``rows(cfg, size) -> [Row, ...]``: every provider of every
    op of the family at that size.
    """
    sizes: dict
    rows: Callable

    def __post_init__(self):
        missing = [k for k in SIZE_SETS if k not in self.sizes]
        if missing:
            raise ValueError(f"sizes must have the keys {SIZE_SETS}, missing {missing}")


# ---------------------------------------------------------------------------- helpers for cases files
def kernel_skip_reasons(op: str, device) -> dict:
    """``{backend: None or why it cannot run op}`` for the non-reference backends and
    ``auto``, read from :func:`armodel_fast.explain` (lines ``name: yes`` / ``name: no - why``)."""
    import armodel_fast

    reasons = {}
    for line in armodel_fast.explain(op, device).splitlines():
        name, _, verdict = line.partition(": ")
        if name == "auto":  # always runnable (it may pick the reference): its row says what ran
            reasons[name] = None
        elif name != "reference":
            reasons[name] = None if verdict == "yes" else verdict.removeprefix("no - ")
    return reasons


def compile_skip(cfg: BenchConfig, loop_steps: int = 0) -> Optional[str]:
    """Why compiled rows are skipped (None: run them). ``loop_steps``: the Python loop
    torch.compile would unroll (0: none), only compiled in auto mode when short."""
    if cfg.compile == "off":
        return "--no-compile"
    if cfg.compile == "auto" and loop_steps > COMPILE_AUTO_MAX_D:
        return (f"compiling the {loop_steps}-step loop takes minutes; auto mode compiles it only "
                f"at D <= {COMPILE_AUTO_MAX_D} (pass --compile)")
    return None


def no_grad_call(fn):
    """The callable to time for a forward: ``fn()`` without autograd."""
    def run():
        with torch.no_grad():
            return fn()
    return run


def forward_backward(fn, zero):
    """One call: ``fn()`` (a tensor), ``.sum().backward()``, then ``zero()`` drops the gradients."""
    def run():
        fn().sum().backward()
        zero()
    return run


def zero_grads(*tensors):
    """A ``zero`` for :func:`forward_backward`: sets each tensor's ``.grad`` to None."""
    def zero():
        for t in tensors:
            t.grad = None
    return zero


@contextlib.contextmanager
def seeded(seed: int):
    """Inside: the global CPU RNG seeded with ``seed``; after: restored as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
