"""Autograd helpers shared by the op families."""
from __future__ import annotations

import torch


def all_finite(*tensors) -> bool:
    """Whether every floating-point tensor given (None and integer tensors are skipped) holds
    only finite values: one elementwise pass over each and one read of the combined flag."""
    flags = [torch.isfinite(t).all() for t in tensors if t is not None and t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def refuse_nonfinite_compiled(what: str, backend: str, *params) -> None:
    """The NaN/inf rule of a backward traced by ``torch.compile`` (docs/DESIGN.md section 9):
    eager backwards compute the gradients through the reference when a value is NaN/inf,
    which cannot run inside a compiled graph, so a compiled backward refuses NaN/inf
    parameters (checked at run time, one pass) instead of returning kernel gradients whose
    NaN/inf pattern is not the reference's."""
    if not all_finite(*params):
        raise ValueError(f"{what}: a parameter holds NaN or inf in a backward compiled by torch.compile; the "
                         f"{backend!r} kernels' gradients would not carry the reference's NaN/inf there. Run the "
                         f"step without torch.compile (eager backwards compute them through the reference) or "
                         f"with backend='reference'")


def forbid_double_backward(backward_op, what: str) -> None:
    """A clear error instead of PyTorch's "no autograd formula" when a second derivative is
    taken through ``backward_op`` (``create_graph=True``, then backward again)."""
    def backward(ctx, *grads):
        raise NotImplementedError(
            f"second-order gradients through the fast {what} kernels (create_graph=True, then differentiating "
            f"the gradients) are not implemented; use backend='reference' for them")

    backward_op.register_autograd(backward, setup_context=lambda ctx, inputs, output: None)
