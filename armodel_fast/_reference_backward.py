"""Gradients that a fast backward computed through the reference, counted and warned about: the one
stated exception to "nothing falls back silently" (:mod:`armodel_fast.dispatch`): NaN/inf among a fast
backward's inputs (docs/DESIGN.md section 9) or a backward under vmap. Re-exported by ``dispatch``."""
from __future__ import annotations

import threading
import warnings
from typing import Dict, Tuple

_REFERENCE_BACKWARDS, _REFERENCE_BACKWARDS_LOCK = {}, threading.Lock()  # {(op, backend, why): count}
_WHY_REFERENCE = {  # why a fast backward computed its gradients through the reference
    "nonfinite": "NaN/inf among the parameters, inputs or upstream gradients of a {b!r} backward (the kernels skip "
                 "terms such as NaN * 0 that the reference's dense products keep; docs/DESIGN.md section 9)",
    "transform": "a {b!r} backward ran under vmap (autograd.grad(..., is_grads_batched=True), or torch.func over "
                 "a backward), for which the kernels have no batching rules"}


def note_reference_backward(op: str, backend: str, why: str = "nonfinite") -> None:
    """Count and warn (``RuntimeWarning``, once per op, backend and ``why``) of a reference backward."""
    with _REFERENCE_BACKWARDS_LOCK:
        _REFERENCE_BACKWARDS[(op, backend, why)] = _REFERENCE_BACKWARDS.get((op, backend, why), 0) + 1
    warnings.warn(f"{op}: " + _WHY_REFERENCE[why].format(b=backend) + "; its gradients were computed by the "
                  "reference (autograd of the plain PyTorch math)", RuntimeWarning, stacklevel=2)


def reference_backwards(why: str = "nonfinite") -> Dict[Tuple[str, str], int]:
    """``{(op, backend): count}`` of the backwards run by the reference for ``why`` (nonfinite, transform)."""
    with _REFERENCE_BACKWARDS_LOCK:
        return {(op, b): n for (op, b, w), n in _REFERENCE_BACKWARDS.items() if w == why}
