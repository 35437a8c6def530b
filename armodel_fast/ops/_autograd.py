"""Autograd helpers shared by the op families."""
from __future__ import annotations

import torch

from .._validate import cpu_extension, tensor_is_finite


def any_nonfinite(t) -> bool:
    """Whether ``t`` holds a NaN or an infinity: one pass over the bits without temporaries (the
    extension's bit test) where it runs (``cpu_extension``), else the input checks' test
    (``tensor_is_finite``)."""
    t = t.detach()
    bit_test = cpu_extension("masked_linear_any_nonfinite", t)
    if bit_test is not None:
        return bit_test(t)  # it reads one copy of each broadcast (stride-0) dimension itself
    for d, stride in enumerate(t.stride() if t.numel() > 1 else ()):
        if stride == 0 and t.shape[d] > 1:  # a broadcast dimension repeats the same values (e.g. the
            t = t.narrow(d, 0, 1)  # gradient of .sum()): one copy of them is checked, not materialised
    return not tensor_is_finite(t)


def all_finite(*tensors) -> bool:
    """Whether every floating-point tensor given (None and integer tensors are skipped) holds
    only finite values: one pass over each (:func:`any_nonfinite` on the CPU; on a GPU one
    ``isfinite`` per tensor and one read of the combined flag)."""
    tensors = [t for t in tensors if t is not None and t.is_floating_point()]
    if tensors and all(t.device.type == "cpu" for t in tensors):
        return not any(any_nonfinite(t) for t in tensors)
    flags = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


def forbid_double_backward(backward_op, what: str) -> None:
    """A clear error instead of PyTorch's "no autograd formula" when a second derivative is
    taken through ``backward_op`` (``create_graph=True``, then backward again)."""
    def backward(ctx, *grads):
        raise NotImplementedError(
            f"second-order gradients through the fast {what} kernels (create_graph=True, then differentiating "
            f"the gradients) are not implemented; use backend='reference' for them")

    backward_op.register_autograd(backward, setup_context=lambda ctx, inputs, output: None)
