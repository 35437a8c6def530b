"""Autograd helpers shared by the op families."""
from __future__ import annotations

import torch


def all_finite(*tensors) -> bool:
    """Whether every floating-point tensor given (None and integer tensors are skipped) holds
    only finite values: one elementwise pass over each and one read of the combined flag."""
    flags = [torch.isfinite(t).all() for t in tensors if t is not None and t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def forbid_double_backward(backward_op, what: str) -> None:
    """A clear error instead of PyTorch's "no autograd formula" when a second derivative is
    taken through ``backward_op`` (``create_graph=True``, then backward again)."""
    def backward(ctx, *grads):
        raise NotImplementedError(
            f"second-order gradients through the fast {what} kernels (create_graph=True, then differentiating "
            f"the gradients) are not implemented; use backend='reference' for them")

    backward_op.register_autograd(backward, setup_context=lambda ctx, inputs, output: None)
