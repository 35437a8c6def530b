"""Backend registry and dispatch: which kernels exist here, and why not.

A backend is one of ``reference`` (plain PyTorch, always present), ``cpp``
(the C++ CPU extension), ``triton`` (Triton kernels; CPU tensors only under
``TRITON_INTERPRET=1``) and ``cuda`` (the CUDA extension). Kernel modules
register the ops they implement with :func:`register_kernel`; models resolve
``backend="auto"`` or an explicit name with :func:`resolve_backend`, which never
falls back silently: an explicit backend that cannot run raises
:class:`BackendUnavailableError` with the reason and the fix.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

import torch

BACKENDS = ("reference", "cpp", "triton", "cuda")
# ``auto`` tries these in order for a tensor on that device type.
AUTO_ORDER = {"cpu": ("cpp", "reference"), "cuda": ("cuda", "triton", "reference")}

_KERNELS: dict[str, set] = {}
_DTYPES: dict[tuple, tuple] = {}  # (op, backend) -> the parameter dtypes its kernels take (absent: any float)


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run this op on this device."""


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str
    ops: tuple = field(default_factory=tuple)

    def __str__(self) -> str:
        state = "available" if self.available else "unavailable"
        ops = ", ".join(self.ops) if self.ops else "no ops yet"
        return f"{self.name}: {state} ({self.reason}); ops: {ops}"


def register_kernel(op: str, backend: str, dtypes=None) -> None:
    """Declare that ``backend`` implements ``op`` (called by kernel modules at import),
    for parameters of the floating ``dtypes`` given (None: every floating dtype)."""
    if backend not in BACKENDS or backend == "reference":
        raise ValueError(f"backend must be one of {BACKENDS[1:]}, got {backend!r}")
    _KERNELS.setdefault(op, set()).add(backend)
    if dtypes is not None:
        _DTYPES[(op, backend)] = tuple(dtypes)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# Looked up once: torch.compile (torch 2.11) refuses to trace importlib.util.find_spec,
# which would break the graph of every forward that resolves its backend.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _platform_status(name: str) -> tuple:
    """(available, reason) of a backend on this machine, independent of any op."""
    if name == "reference":
        return True, "plain PyTorch, always available"
    if name == "cpp":
        from . import _ext
        if _ext.get_ext() is None:
            return False, _ext.ext_error()
        return True, "C++ CPU extension armodel_fast._C loaded"
    if name == "triton":
        if not _TRITON_INSTALLED:
            return False, "triton is not installed: pip install triton==3.8.0"
        if torch.cuda.is_available():
            return True, "triton with a CUDA GPU"
        if os.environ.get("TRITON_INTERPRET") == "1":
            return True, "triton interpreter on CPU tensors (TRITON_INTERPRET=1; slow, for testing)"
        return False, "no CUDA GPU; set TRITON_INTERPRET=1 before import to run Triton on CPU (slow)"
    if name == "cuda":
        from . import _ext
        if _ext.get_cuda_ext() is None:
            return False, _ext.cuda_ext_error()
        if not torch.cuda.is_available():
            return False, "CUDA extension compiled in, but no CUDA GPU/driver is usable here"
        return True, "CUDA extension armodel_fast._C_cuda loaded"
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def backends() -> dict:
    """Status of every backend: ``{name: BackendStatus(available, reason, ops)}``."""
    out = {}
    for name in BACKENDS:
        ok, why = _platform_status(name)
        ops = tuple(sorted(op for op, bs in _KERNELS.items() if name in bs or name == "reference"))
        out[name] = BackendStatus(name, ok, why, ops)
    return out


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
    if backend not in _KERNELS.get(op, ()):
        raise BackendUnavailableError(f"backend {backend!r} has no kernel for {op} yet; "
                                      f"use backend='reference' or 'auto' (see armodel_fast.backends())")
    return backend


def _why_not(name: str, op: str, device: torch.device, dtype=None):
    """None if ``name`` can run ``op`` on ``device`` (for ``dtype`` parameters, when given),
    else the reason it cannot."""
    if name == "reference":
        return None
    ok, why = _platform_status(name)
    if not ok:
        return why
    if name not in _KERNELS.get(op, ()):
        return f"backend {name!r} has no kernel for {op} yet"
    if name == "cpp" and device.type != "cpu":
        return f"backend 'cpp' runs on CPU tensors, got {device}"
    if name == "cuda" and device.type != "cuda":
        return f"backend 'cuda' runs on CUDA tensors, got {device}"
    if name == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1)"
    takes = _DTYPES.get((op, name))
    if dtype is not None and takes is not None and dtype not in takes:
        return (f"backend {name!r} has no {_dtype_name(dtype)} kernel for {op} "
                f"(it takes {', '.join(map(_dtype_name, takes))})")
    return None


def resolve_backend(backend: str, op: str, device: torch.device, dtype=None) -> str:
    """The backend that will run ``op`` for tensors on ``device`` (parameters of ``dtype``).

    ``auto`` picks the first available in ``AUTO_ORDER`` (compiled kernels first) that
    takes ``dtype``, ending at ``reference`` (no size rule: for tiny layers the
    reference can be faster); an explicit name that cannot run raises
    with the reason (a dtype it does not take is left to the op, whose
    ``TypeError`` names the argument).
    """
    check_backend_name(backend)
    device = torch.device(device)
    if backend == "auto":
        for name in AUTO_ORDER.get(device.type, ("reference",)):
            if _why_not(name, op, device, dtype) is None:
                return name
        return "reference"
    why = _why_not(backend, op, device)
    if why is not None:
        raise BackendUnavailableError(f"cannot run {op} with backend={backend!r}: {why}")
    return backend


def explain(op: str, device="cpu", dtype=None) -> str:
    """One line per backend saying whether it would run ``op`` on ``device`` (for ``dtype``
    parameters, when given) and why not."""
    device = torch.device(device)
    lines = []
    for name in BACKENDS:
        why = _why_not(name, op, device, dtype)
        lines.append(f"{name}: {'yes' if why is None else 'no - ' + why}")
    return "\n".join(lines)
