"""Lazy, checked import of the native extensions.

``get_ext()`` / ``get_cuda_ext()`` return ``armodel_fast._C`` / ``armodel_fast._C_cuda``
or ``None``; ``ext_error()`` / ``cuda_ext_error()`` then say why, with the fix.
There is no silent fallback here: callers decide what a missing extension means.

An extension is not imported when:

* ``ARMODEL_FAST_NO_EXT=1`` is set (at run time, or at build time so it was never built);
* setup.py recorded (in ``_build_info.py``) that it skipped it, e.g. no CUDA;
* it was built against another torch than the one running (its C++ ABI would not match);
* importing it fails (the ImportError text is reported).
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType
from typing import Dict, Optional, Tuple

import torch

FIX = "reinstall with `pip install --no-build-isolation -e .`"

_cache: Dict[str, Tuple[Optional[ModuleType], Optional[str]]] = {}


def _build_record() -> Tuple[Optional[str], Dict[str, str]]:
    """(torch version at build time, {extension: reason not built}) from setup.py."""
    try:
        from . import _build_info
    except ImportError:
        return None, {}
    return getattr(_build_info, "TORCH_VERSION", None), dict(getattr(_build_info, "NOT_BUILT", {}))


def _load(name: str) -> Tuple[Optional[ModuleType], Optional[str]]:
    """Import ``armodel_fast.<name>`` if it is safe to; return (module, None) or (None, reason)."""
    full = f"armodel_fast.{name}"
    if os.environ.get("ARMODEL_FAST_NO_EXT") == "1":
        return None, f"{full} disabled by ARMODEL_FAST_NO_EXT=1 (unset it to use it; if it was never built, {FIX})"

    built_torch, not_built = _build_record()
    if name in not_built:
        return None, f"{full} was not built: {not_built[name]} ({FIX} once that is fixed)"
    if built_torch is not None and built_torch != torch.__version__:
        reason = (
            f"{full} was built against torch {built_torch}, running torch {torch.__version__}: "
            f"{FIX} (or install the torch the wheel pins)"
        )
        # Loading it could crash on the C++ ABI; say so once, loudly, and run without it.
        warnings.warn(f"armodel-fast: not loading native kernels: {reason}", RuntimeWarning, stacklevel=3)
        return None, reason

    try:
        return importlib.import_module(full), None
    except (ImportError, OSError) as exc:
        return None, f"{full} failed to import: {exc}; {FIX}"


def _cached(name: str) -> Tuple[Optional[ModuleType], Optional[str]]:
    if name not in _cache:
        _cache[name] = _load(name)
    return _cache[name]


def get_ext() -> Optional[ModuleType]:
    """The C++ CPU extension ``armodel_fast._C``, or None (see ``ext_error()``)."""
    return _cached("_C")[0]


def ext_error() -> Optional[str]:
    """Why ``get_ext()`` is None (None when the extension loaded)."""
    return _cached("_C")[1]


def get_cuda_ext() -> Optional[ModuleType]:
    """The CUDA extension ``armodel_fast._C_cuda``, or None (see ``cuda_ext_error()``)."""
    return _cached("_C_cuda")[0]


def cuda_ext_error() -> Optional[str]:
    """Why ``get_cuda_ext()`` is None (None when the extension loaded)."""
    return _cached("_C_cuda")[1]
