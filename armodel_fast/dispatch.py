"""The one backend registry: which kernels exist here, which one runs, and why not.

A backend is one of ``reference`` (plain PyTorch, always present), ``cpp`` (the C++ CPU extension
``armodel_fast._C``), ``triton`` (CPU tensors only under ``TRITON_INTERPRET=1``) and ``cuda``.

The table ``(op, stage) -> {backend: Launcher}`` is filled by one decorator, :func:`register`,
from the op folders (``ops/nade``, ``ops/masked_linear``, ``ops/made``), with the parameter
dtypes each launcher takes and the native function it calls. A backend implements ``op`` when it
has a usable launcher for every stage of ``op`` but the optional ones (:func:`optional_launcher`).
Modules resolve ``backend="auto"`` (or check an explicit name) once per call with
:func:`resolve_backend` and pass the concrete name down; :func:`launcher` then finds the
function. Nothing falls back silently: an explicit backend that cannot run raises
:class:`BackendUnavailableError` with the reason and the fix; the one exception, stated, counted
and warned about: a fast backward that meets NaN/inf (DESIGN.md 9) or runs under vmap computes
its gradients through the reference (:func:`note_reference_backward`).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Optional, Tuple

import torch

from . import _ext
from ._reference_backward import note_reference_backward, reference_backwards  # noqa: F401 (part of this API)
from ._validate import forward_ad_active, transform_active

BACKENDS = ("reference", "cpp", "triton", "cuda")
AUTO_ORDER = {"cpu": ("cpp", "reference"), "cuda": ("cuda", "triton", "reference")}  # auto's order per device,
# or, for these ops, in this order. On an H100 (README "GPU results"): Triton beat CUDA in every NADE-family
# row; the masked-layer kernels ran at 0.05-0.47x the dense reference (FVSBN, one masked layer, by analogy).
AUTO_ORDER_BY_OP = {**{("cuda", op): ("triton", "cuda", "reference") for op in ("nade", "categorical_nade", "rnade")},
                    **{("cuda", op): ("reference",) for op in ("masked_linear", "made", "fvsbn")}}
_UNDER_TRANSFORM = "a torch.func transform (vmap, grad, jacrev, ...) is active: the kernels have no functorch rules"
_UNDER_FORWARD_AD = ("a forward-mode AD level (torch.autograd.forward_ad.dual_level, in any thread) is open: "
                     "the kernels have no forward derivatives (tangents)")
_SLOWER_ON_GPU = ("on CUDA tensors the masked-layer kernels measured slower than the dense reference "
                  "(0.05-0.47x on an H100; README 'GPU results'); backend='cuda' or 'triton' still runs them")

# ``auto``'s size rule on the CPU: below a size the kernels' fixed cost per call (and, in training on
# unsorted degrees, the weights' gather) makes the dense reference faster. Thresholds that hold on both
# 2-core CPUs of the sweeps (an AMD EPYC, an Intel Xeon with AVX-512): README "Choosing a backend".
AUTO_MIN_WORK = {"train": 1 << 25, "eval": 1 << 26, "train_unsorted": 1 << 28,  # B * in * out (a dense layer's
                 "train_unsorted_tiles": 1 << 27}  # multiply-adds); unsorted degrees: W gathered / read by the tiles
SIZE_RULE_OPS = ("masked_linear", "made", "fvsbn")
OPS = ("nade", "categorical_nade", "rnade", "masked_linear", "fvsbn", "made", "made_sample", "arrnn")  # arrnn: reference


@dataclass(frozen=True)
class Work:
    """What ``auto``'s size rule looks at: ``macs`` (B * in * out of a masked layer; a MADE's mean over its
    layers), ``training`` (a graph is recorded), ``sorted`` (every layer's degrees sorted: no gather) and
    ``dtype`` (the parameters'; None: fp32)."""
    macs: int
    training: bool
    sorted: bool
    dtype: Optional[torch.dtype] = None


def _tiles_train_unsorted(dtype) -> bool:  # fp32 on AVX-512: the tiles read W through the degree sorts, no gather
    from .ops.masked_linear.launchers import tiles_take_unsorted  # (it imports this module: not at the top)
    return dtype in (None, torch.float32) and tiles_take_unsorted()


def size_rule_says(op: str, work) -> Optional[str]:
    """Why ``auto`` takes the reference instead of the C++ kernels for ``work`` (a :class:`Work`, or a
    callable returning one, called only for the ops the rule covers; None: it need not)."""
    if op not in SIZE_RULE_OPS or work is None:
        return None
    work = work() if callable(work) else work
    kind = ("train" if work.sorted else "train_unsorted") if work.training else "eval"
    if kind == "train_unsorted" and _tiles_train_unsorted(work.dtype) and "train_unsorted_tiles" in AUTO_MIN_WORK:
        kind = "train_unsorted_tiles"
    if work.macs < (need := AUTO_MIN_WORK[kind]):
        what = {"train": "training", "eval": "evaluation",
                "train_unsorted": "training with unsorted degrees (a random order's input or output layer: the "
                                  "kernels gather the weights every step)",
                "train_unsorted_tiles": "training with unsorted degrees (a random order's input or output layer: "
                                        "the AVX-512 kernels read the weights through the degree sorts)"}[kind]
        return (f"too small: B*in*out per layer = {work.macs} < {need} ({what}; the kernels' fixed cost per "
                "call makes the dense reference faster below this)")
    return None


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run this op on this device."""


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str
    ops: tuple = field(default_factory=tuple)

    def __str__(self) -> str:
        return (f"{self.name}: {'available' if self.available else 'unavailable'} ({self.reason}); "
                f"ops: {', '.join(self.ops) if self.ops else 'no ops yet'}")


@dataclass(frozen=True)
class Launcher:
    """``fn`` runs one stage of an op on one backend for parameters of ``dtypes`` (None: any floating
    dtype); ``requires``: the native functions it calls (an older build registers nothing it cannot run)."""
    fn: Callable
    dtypes: Optional[Tuple[torch.dtype, ...]] = None
    requires: Tuple[str, ...] = ()


_TABLE: Dict[Tuple[str, str], Dict[str, Launcher]] = {}
_OPTIONAL_STAGES: set = set()  # (op, stage) that a backend may leave out


def register(op: str, stage: str, backend: str, dtypes=None, requires=(), optional=False) -> Callable:
    """Decorator: the function launches ``stage`` of ``op`` on ``backend`` (stack it for several
    backends; the reference runs every op without one). ``optional``: backends may leave it out."""
    if backend not in BACKENDS or op not in OPS:
        raise ValueError(f"backend must be one of {BACKENDS} and op one of {OPS}, got {backend!r}, {op!r}")
    requires = (requires,) if isinstance(requires, str) else tuple(requires)
    if optional:
        _OPTIONAL_STAGES.add((op, stage))

    def deco(fn: Callable) -> Callable:
        _TABLE.setdefault((op, stage), {})[backend] = Launcher(fn, None if dtypes is None else tuple(dtypes),
                                                               requires)
        return fn
    return deco


def optional_launcher(op: str, stage: str, backend: str) -> Optional[Callable]:
    """An optional stage's function on ``backend`` (a faster form of the required stages where it
    applies), or None where it has none or the build lacks what it calls."""
    entry = _TABLE.get((op, stage), {}).get(backend)
    return entry.fn if _usable(backend, entry) else None


def launcher(op: str, stage: str, backend: str) -> Callable:
    """The function registered for ``(op, stage)`` on ``backend``."""
    table = _TABLE.get((op, stage), {})
    if backend not in table:
        raise BackendUnavailableError(f"armodel_fast::{op}_{stage} has no {backend!r} kernel "
                                      f"(implemented: {', '.join(sorted(table)) or 'none'})")
    return table[backend].fn


# ---- the platform: is a backend usable on this machine at all? ---------------------

# Looked up once: torch.compile (torch 2.11) refuses to trace find_spec (a graph break in every forward).
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _triton_status() -> tuple:
    if not _TRITON_INSTALLED:
        return False, "triton is not installed: pip install 'triton>=3.6'"
    if torch.cuda.is_available():
        return True, "triton with a CUDA GPU"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "triton interpreter on CPU tensors (TRITON_INTERPRET=1; slow, for testing)"
    return False, "no CUDA GPU; set TRITON_INTERPRET=1 before import to run Triton on CPU (slow)"


def _cpp_status() -> tuple:
    return (False, _ext.ext_error()) if _ext.get_ext() is None else (True, "C++ CPU extension armodel_fast._C loaded")


def _cuda_status() -> tuple:
    if _ext.get_cuda_ext() is None:
        return False, _ext.cuda_ext_error()
    if not torch.cuda.is_available():
        return False, "CUDA extension compiled in, but no CUDA GPU/driver is usable here"
    return True, "CUDA extension armodel_fast._C_cuda loaded"


_PLATFORM = {"reference": lambda: (True, "plain PyTorch, always available"), "cpp": _cpp_status,
             "triton": _triton_status, "cuda": _cuda_status}
_NATIVE = {"cpp": _ext.get_ext, "cuda": _ext.get_cuda_ext}  # the extension a backend's `requires` names live in


def _platform_status(name: str) -> tuple:
    """(available, reason) of a backend on this machine, independent of any op."""
    if name not in _PLATFORM:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return _PLATFORM[name]()


def _usable(name: str, entry: Optional[Launcher]) -> bool:
    if entry is None:
        return False
    ext = _NATIVE[name]() if name in _NATIVE else None
    return all(ext is not None and hasattr(ext, f) for f in entry.requires)


def implements(name: str, op: str) -> bool:
    """Whether ``name`` has a usable launcher for every stage of ``op`` (reference: always)."""
    if name == "reference":
        return True
    stages = [table for (o, s), table in _TABLE.items() if o == op and (o, s) not in _OPTIONAL_STAGES]
    return bool(stages) and all(_usable(name, table.get(name)) for table in stages)


def dtypes(op: str, name: str) -> Optional[tuple]:
    """The parameter dtypes ``name``'s kernels for ``op`` take (None: every floating dtype)."""
    takes = None
    for (o, _), table in _TABLE.items():
        entry = table.get(name)
        if o == op and entry is not None and entry.dtypes is not None:
            takes = entry.dtypes if takes is None else tuple(d for d in takes if d in entry.dtypes)
    return takes


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_dtype(op: str, backend: str, dtype: torch.dtype, what: str) -> None:
    """TypeError naming ``what`` unless ``backend``'s kernels for ``op`` take ``dtype``."""
    takes = dtypes(op, backend)
    if takes is not None and dtype not in takes:
        raise TypeError(f"{what} must be {' or '.join(map(_dtype_name, takes))} for the {backend} backend, "
                        f"got {dtype}")


def backends() -> dict:
    """Status of every backend: ``{name: BackendStatus(available, reason, ops)}``."""
    ops = sorted({o for o, _ in _TABLE})
    return {name: BackendStatus(name, *_platform_status(name), tuple(o for o in ops if implements(name, o)))
            for name in BACKENDS}


# ---- choosing a backend ----------------------------------------------------------------

def check_backend_name(backend) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    return backend


def check_backend(backend, op: str) -> str:
    """Validate a model's ``backend=`` argument at construction.

    Unknown names raise ``ValueError``; an explicit backend that has no kernel
    for ``op`` or cannot run on this machine at all raises
    :class:`BackendUnavailableError` now rather than at the first call.
    """
    check_backend_name(backend)
    if backend in ("auto", "reference"):
        return backend
    ok, why = _platform_status(backend)  # first: an unbuilt extension registers no kernels either
    if not ok:
        raise BackendUnavailableError(f"backend {backend!r} is unavailable here: {why}")
    if not implements(backend, op):
        raise BackendUnavailableError(f"backend {backend!r} has no kernel for {op} yet; "
                                      f"use backend='reference' or 'auto' (see armodel_fast.backends())")
    return backend


def _device_why_not(name: str, device: torch.device) -> Optional[str]:
    if name == "triton":
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return "backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1)"
        return None
    want = {"cpp": "cpu", "cuda": "cuda"}.get(name, device.type)
    if device.type != want:
        return f"backend {name!r} runs on {want.upper()} tensors, got {device}"
    return None


def _why_not(name: str, op: str, device: torch.device, dtype=None) -> Optional[str]:
    """None if ``name`` can run ``op`` on ``device`` (for ``dtype`` parameters, when given),
    else the reason it cannot."""
    if name == "reference":
        return None
    if (blocked := _no_kernels_here()) is not None:
        return blocked + " (use backend='auto' or 'reference' there)"
    ok, why = _platform_status(name)
    if not ok:
        return why
    if not implements(name, op):
        return f"backend {name!r} has no kernel for {op} yet"
    why = _device_why_not(name, device)
    if why is not None:
        return why
    takes = dtypes(op, name)
    if dtype is not None and takes is not None and dtype not in takes:
        return (f"backend {name!r} has no {_dtype_name(dtype)} kernel for {op} "
                f"(it takes {', '.join(map(_dtype_name, takes))})")
    return None


def auto_order(op: str, device_type: str) -> tuple:  # the backends ``auto`` tries for ``op``, in order
    return AUTO_ORDER_BY_OP.get((device_type, op), AUTO_ORDER.get(device_type, ("reference",)))


def auto_rule_says(op: str, device: torch.device) -> Optional[str]:
    """Why ``auto`` takes the reference for ``op`` on ``device`` by a rule (a transform, forward-mode AD;
    the GPU measurement)."""
    if blocked := _no_kernels_here():
        return blocked
    kernels = [b for b in AUTO_ORDER.get(device.type, ()) if b != "reference"]
    ruled = AUTO_ORDER_BY_OP.get((device.type, op)) == ("reference",)
    return _SLOWER_ON_GPU if ruled and any(_why_not(b, op, device) is None for b in kernels) else None


def _no_kernels_here() -> Optional[str]:  # why no kernel may run in this context (their autograd lacks the rules)
    return _UNDER_TRANSFORM if transform_active() else _UNDER_FORWARD_AD if forward_ad_active() else None


def _pick_auto(op: str, device: torch.device, dtype) -> str:
    for name in auto_order(op, device.type):
        if _why_not(name, op, device, dtype) is None:
            return name
    return "reference"


@torch.compiler.assume_constant_result
def _auto_when_compiling(op: str, device_type: str, dtype: torch.dtype) -> str:
    return _pick_auto(op, torch.device(device_type), dtype)


_LAST_AUTO: list = [None]  # the most recent eager ``auto`` pick: (op, backend, why the size rule chose reference)


def last_auto_pick() -> Optional[Tuple[str, str, Optional[str]]]:
    """``(op, backend, why)`` of the latest eager ``backend="auto"`` resolution (``why``: the rule's reason
    when one chose the reference); None before any. Models keep what ran in ``last_backend``."""
    return _LAST_AUTO[0]


def resolve_backend(backend: str, op: str, device: torch.device, dtype=None, work=None) -> str:
    """The backend that will run ``op`` for tensors on ``device`` (parameters of ``dtype``).

    ``auto`` picks the first available in :func:`auto_order` (kernels first; the reference for
    the masked layers on CUDA, and under torch.func transforms) that takes ``dtype``;
    ``work`` (a :class:`Work` or a callable returning one, called only when it matters) applies
    the CPU size rule (:func:`size_rule_says`); an explicit name that cannot run raises with the
    reason (a dtype it does not take is left to the op, whose ``TypeError`` names the argument).
    Under ``torch.compile`` the registry stays out of the graph: ``auto`` is a trace-time
    constant (the size rule included: a guard on the shapes), explicit names pass as given, and
    a forward-mode AD level is read while tracing (a guard: opening one recompiles).
    """
    auto = backend == "auto"
    if torch.compiler.is_compiling():
        if forward_ad_active():
            if auto:
                return "reference"
            raise BackendUnavailableError(f"cannot run {op} with backend={backend!r}: {_UNDER_FORWARD_AD}")
        picked = _auto_when_compiling(op, torch.device(device).type, dtype) if auto else backend
        return "reference" if auto and picked == "cpp" and size_rule_says(op, work) else picked
    check_backend_name(backend)
    device = torch.device(device)
    if auto:
        picked = _pick_auto(op, device, dtype)
        if picked == "reference" and (why := auto_rule_says(op, device)):
            _LAST_AUTO[0] = (op, "reference", why)
            return "reference"
        if picked == "cpp" and (why := size_rule_says(op, work)) is not None:
            _LAST_AUTO[0] = (op, "reference", why)
            return "reference"
        _LAST_AUTO[0] = (op, picked, None)
        return picked
    why = _why_not(backend, op, device)
    if why is not None:
        raise BackendUnavailableError(f"cannot run {op} with backend={backend!r}: {why}")
    return backend


def explain(op: str, device="cpu", dtype=None, work: Optional[Work] = None) -> str:
    """One line per backend saying whether it would run ``op`` on ``device`` (for ``dtype``
    parameters, when given) and why not, then what ``auto`` picks and, where a rule chose the reference
    (the GPU rule; the CPU size rule for ``masked_linear`` / ``fvsbn`` / ``made`` given ``work``), why."""
    work = work if work is None or dtype is None or work.dtype is not None else replace(work, dtype=dtype)
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    device = torch.device(device)
    lines = []
    for name in BACKENDS:
        why = _why_not(name, op, device, dtype)
        lines.append(f"{name}: {'yes' if why is None else 'no - ' + why}")
    picked = _pick_auto(op, device, dtype)
    if picked == "reference" and (why := auto_rule_says(op, device)):
        lines.append(f"auto: reference - {why}")
    elif op in SIZE_RULE_OPS and picked == "cpp":
        why = size_rule_says(op, work)
        if why is not None:
            lines.append(f"auto: reference - {why}")
        elif work is not None:
            lines.append("auto: cpp - large enough for the kernels (size rule: README, 'Choosing a backend')")
        else:
            lines.append("auto: cpp, or reference where the size rule says so (B*in*out per layer below "
                         f"{AUTO_MIN_WORK['train']} in training, "
                         f"{AUTO_MIN_WORK['train_unsorted_tiles' if _tiles_train_unsorted(dtype) else 'train_unsorted']}"
                         f" in training on unsorted degrees, {AUTO_MIN_WORK['eval']} in evaluation); pass "
                         "work=Work(...) for one case")
    else:
        lines.append(f"auto: {picked}")
    return "\n".join(lines)
