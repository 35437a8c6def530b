"""Argument checks shared by every model and op.

Every public entry point validates its inputs here, before any kernel runs, so
bad input gets a ``ValueError``/``TypeError`` that names the argument instead of
a wrong answer or a crash inside a kernel (docs/DESIGN.md section 6).

Under ``torch.compile`` the checks that read tensor *values* (binary, in
range, finite, uniforms in [0, 1]) are skipped - they would break the graph -
while shapes, dtypes and devices are still checked; the C++ launchers check
orders and ranges again, so compiled code still fails loudly on bad data.
"""
from __future__ import annotations

import math
import operator
from typing import Optional, Sequence, Union

import torch

OrderLike = Union[None, Sequence[int], torch.Tensor]


def check_tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def as_int(v) -> Optional[int]:
    """``v`` as a Python int when it is an integer (int, numpy or 0-d integer torch scalar; not a
    bool), else None."""
    if torch.compiler.is_compiling() and isinstance(v, int) and not isinstance(v, bool):
        return v  # (an int argument that dynamic=True made symbolic: Dynamo cannot trace hasattr on it)
    if isinstance(v, bool) or type(v).__name__ == "bool_" or not hasattr(v, "__index__"):
        return None
    if isinstance(v, torch.Tensor) and (v.dim() or v.dtype == torch.bool):
        return None
    try:
        return operator.index(v)
    except TypeError:
        return None


def check_positive_int(name: str, v, minimum: int = 1) -> int:
    if (n := as_int(v)) is None:
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    v = n
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def check_bool(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return v


def check_seed(seed, name: str = "seed") -> int:
    """An int seed (bool and None refused: a seed must reproduce the same draw)."""
    if (n := as_int(seed)) is None:
        raise TypeError(f"{name} must be an int, got {type(seed).__name__} "
                        f"(None is not accepted: pass an explicit int for reproducible masks)")
    return n


def check_order(order: OrderLike, D: int, name: str = "order") -> torch.Tensor:
    """Return ``order`` as a CPU int64 permutation of ``0..D-1`` (None: natural order).

    Under ``torch.compile`` a tensor passes unchecked (the check reads its values; the
    native launchers check it again)."""
    if order is None:
        return torch.arange(D, dtype=torch.long)
    if isinstance(order, torch.Tensor) and not _reading_values_ok():
        return order.detach().to("cpu", torch.long).contiguous()
    if isinstance(order, torch.Tensor):
        if order.dtype.is_floating_point or order.dtype.is_complex or order.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got dtype {order.dtype}")
        o = order.detach().to("cpu", torch.long)
    else:
        try:
            o = torch.as_tensor(list(order))
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name} must be a sequence of ints or an int tensor: {e}") from None
        if o.dtype != torch.long:
            raise TypeError(f"{name} must hold integers, got dtype {o.dtype}")
    if o.dim() != 1 or o.numel() != D:
        raise ValueError(f"{name} must be a 1-D permutation of length D={D}, got shape {tuple(o.shape)}")
    if not torch.equal(torch.sort(o).values, torch.arange(D)):
        raise ValueError(f"{name} must be a permutation of 0..{D - 1}, got {o.tolist()[:16]}")
    return o.contiguous()


def transform_active() -> bool:
    """Whether a torch.func transform (vmap, grad, jacrev, ...) is running this call."""
    return torch._C._functorch.maybe_current_level() is not None


def forward_ad_active() -> bool:
    """Whether a forward-mode AD level is open (``torch.autograd.forward_ad.dual_level``; torch.func.jvp
    is a transform instead): the kernels have no forward derivatives, so tangents would be lost."""
    return getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0


def batched_backward(t) -> bool:
    """Whether ``t`` (a gradient reaching a backward) is batched: ``autograd.grad(...,
    is_grads_batched=True)`` runs the backward under vmap (torch's own, not torch.func's: no
    transform is active then). Kernels have no batching rules; the reference math has."""
    if transform_active():
        return True
    if not isinstance(t, torch.Tensor):
        return False
    legacy = getattr(torch._C._functorch, "is_legacy_batchedtensor", None)
    return bool(legacy(t)) if legacy is not None else "Batched" in str(torch._C._dispatch_keys(t))


def _reading_values_ok() -> bool:
    """False while torch.compile traces: data-dependent checks would break the graph."""
    return not torch.compiler.is_compiling()


def values_pass(check) -> bool:
    """``check()``, a test of tensor values, or True where values cannot be read: while
    torch.compile traces, and under torch.func's vmap (a batched tensor has no one value to
    read); under grad / jacrev the checks run as in eager mode."""
    if not _reading_values_ok():
        return True
    try:
        return check()
    except RuntimeError as e:  # vmap refuses .item() / bool() / int() of a batched tensor
        if transform_active() and "vmap" in str(e):
            return True
        raise


def check_x_shape(name: str, x, D: int, device: torch.device, trailing: tuple = ()) -> torch.Tensor:
    """A tensor [B, D, *trailing], real, on ``device`` (what every x / u check starts with)."""
    check_tensor(name, x)
    want = 2 + len(trailing)
    if x.dim() != want or x.shape[1] != D or tuple(x.shape[2:]) != tuple(trailing):
        shape = ", ".join(["B", str(D)] + [str(s) for s in trailing])
        raise ValueError(f"{name} must have shape [{shape}], got {tuple(x.shape)}")
    if x.dtype.is_complex:
        raise TypeError(f"{name} must be real, got dtype {x.dtype}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but the model's parameters are on {device}")
    return x


def cpu_extension(name: str, t: torch.Tensor):
    """The C++ extension's function ``name`` where it can run on ``t``: a CPU tensor outside torch.func
    transforms (their wrapped tensors have no data to read), with the extension built. Else None,
    and the caller runs the torch form of the same exact computation."""
    if t.device.type != "cpu" or transform_active():
        return None
    from . import _ext  # (lazy: _ext imports the compiled extension)
    return getattr(_ext.get_ext(), name, None)


def is_binary(x: torch.Tensor) -> bool:
    """Whether every value of x is 0 or 1: one pass over the bits without temporaries (the
    extension's ``any_nonbinary``) where it runs (:func:`cpu_extension`), else the torch form."""
    any_nonbinary = cpu_extension("any_nonbinary", x)
    if any_nonbinary is not None:
        return not any_nonbinary(x.detach())
    return bool(((x == 0) | (x == 1)).all())


def check_binary_x(x, D: int, device: torch.device, dtype: torch.dtype, name: str = "x") -> torch.Tensor:
    """x: [B, D] with values in {0, 1} (any real or bool dtype) -> ``dtype``."""
    check_x_shape(name, x, D, device)
    if x.dtype == torch.bool:
        return x.to(dtype)
    if not values_pass(lambda: is_binary(x)):
        raise ValueError(f"{name} must be binary (values 0 or 1) for a Bernoulli model")
    return x.to(dtype)


def check_categorical_x(x, D: int, K: int, device: torch.device, name: str = "x") -> torch.Tensor:
    """x: [B, D] integer class indices in ``[0, K)`` -> int64."""
    check_x_shape(name, x, D, device)
    if x.dtype.is_floating_point or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {x.dtype}")
    if x.numel() and not values_pass(lambda: int(x.min()) >= 0 and int(x.max()) < K):
        raise ValueError(f"{name} values must lie in [0, K={K}), got range [{int(x.min())}, {int(x.max())}]")
    return x.long()


def tensor_is_finite(t: torch.Tensor) -> bool:
    """Whether a floating-point tensor holds no NaN or infinity. Its sum is finite exactly when no
    entry is NaN/inf unless finite entries overflow it; only then are the entries tested one by one
    (a sum is one pass without a [B, D] temporary: at [256, 784] 17 us against 380 us here)."""
    return t.numel() == 0 or math.isfinite(float(t.detach().sum())) or bool(torch.isfinite(t).all())


def check_real_x(x, D: int, device: torch.device, dtype: torch.dtype, name: str = "x") -> torch.Tensor:
    """x: [B, D] finite real values -> ``dtype``."""
    check_x_shape(name, x, D, device)
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not values_pass(lambda: tensor_is_finite(x)):
        raise ValueError(f"{name} must be finite")
    return x.to(dtype)


def check_uniforms(u, n: int, D: int, trailing: tuple, device: torch.device, dtype: torch.dtype,
                   name: str = "u") -> torch.Tensor:
    """u: [n, D, *trailing] uniforms in [0, 1] on the model's device -> ``dtype``."""
    check_x_shape(name, u, D, device, trailing)
    if not u.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor of uniforms, got dtype {u.dtype}")
    if u.shape[0] != n:
        raise ValueError(f"{name} must have n={n} rows, got {u.shape[0]}")
    if u.numel() and not values_pass(lambda: bool(((u >= 0) & (u <= 1)).all())):
        raise ValueError(f"{name} must hold uniforms in [0, 1]")
    return u.to(dtype)


def check_context(context, B: int, context_dim: int, device: torch.device, dtype: torch.dtype,
                  name: str = "context") -> Optional[torch.Tensor]:
    """context: [B, context_dim] finite real values when the model was built with context_dim > 0, else None."""
    if context_dim == 0:
        if context is not None:
            raise ValueError(f"{name} was given but the model has context_dim=0")
        return None
    if context is None:
        raise ValueError(f"{name} is required: the model was built with context_dim={context_dim}")
    check_tensor(name, context)
    if context.dim() != 2 or context.shape[0] != B or context.shape[1] != context_dim:
        raise ValueError(f"{name} must have shape [{B}, {context_dim}], got {tuple(context.shape)}")
    if not context.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {context.dtype}")
    if context.device != device:
        raise ValueError(f"{name} is on {context.device} but the model's parameters are on {device}")
    if not values_pass(lambda: tensor_is_finite(context)):  # (the samplers would not reproduce the reference's NaNs)
        raise ValueError(f"{name} must be finite")
    return context.to(dtype)
