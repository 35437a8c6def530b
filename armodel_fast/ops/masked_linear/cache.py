"""The cache of prepared (degree-sorted) masked-linear weights, shared by every backend.

Entries are keyed per weight tensor and kind (``"cpp"``, ``"triton"``, ``"sorted"``):
the tensor itself (weak reference), its version counter, data pointer and layout
and the degree values; every hit also spot-checks 64 connected weight values, bit
for bit (see :mod:`armodel_fast.ops.masked_linear` for the contract).
"""
from __future__ import annotations

import contextlib
import functools
import threading
import weakref

import torch
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook

from ... import _ext
from ..._validate import transform_active
from ...reference.masked_linear import degree_mask


class _Entry:
    """One cached build: ``key`` and spot values recorded BEFORE the build read the weight."""
    __slots__ = ("ref", "key", "in_degrees", "out_degrees", "spot_index", "spot_live", "spot_values", "prepared",
                 "training")


_SPOTS = 64  # weight entries compared at every cache hit (see the module docstring)


_CACHE: dict = {}  # (id(weight), kind) -> _Entry; kind "cpp", "triton" or "sorted" (cuda)
# The reference backend's masks. id(out_degrees) -> (weakref to out_degrees, weakref to in_degrees,
# key, mask, copies of both degree vectors or None): the last mask built for a degree pair, reused while
# both tensors live and neither was written: version counters, and on the CPU also the values (a write
# through .data bumps no version); on a GPU, where comparing would synchronise, a .data write needs
# clear_cache, as for the weights.
_MASKS: dict = {}
_stats = {"hits": 0, "builds": 0, "stale": 0, "discarded": 0}
# Guards _CACHE and _stats, never a build (builds of different threads run in parallel).
# Re-entrant: the weak-reference callback _forget can run from the garbage collector
# inside a section that already holds it.
_LOCK = threading.RLock()
_enabled = [True]


@contextlib.contextmanager
def caching(enabled: bool):
    """Turn the prepared-weight cache on/off inside a ``with`` block (off: rebuild every call)."""
    old, _enabled[0] = _enabled[0], bool(enabled)
    try:
        yield
    finally:
        _enabled[0] = old


def clear_cache() -> None:
    """Drop every cached prepared weight and reference mask (needed only after writes through ``.data``),
    and the grad W blocks the C++ training kernels keep for reuse (memory back, e.g. after training)."""
    with _LOCK:
        _CACHE.clear()
        _MASKS.clear()
    release = getattr(_ext.get_ext(), "masked_linear_release_buffers", None)
    if release is not None:
        release()


def cache_info() -> dict:
    """``{"entries", "hits", "builds", "stale", "discarded"}`` of the prepared-weight cache
    (``stale``: entries rebuilt because spot-checked weight values had changed behind the
    version counter; ``discarded``: builds not stored because the weight's version changed
    while they ran, i.e. another thread updated it)."""
    with _LOCK:
        return {"entries": len(_CACHE), **_stats}


@functools.lru_cache(maxsize=256)
def _spot_grid(n: int, k: int):
    """The candidate positions of an [n, k] weight (CPU), drawn once per shape."""
    g = torch.Generator().manual_seed(n * 1_000_003 + k)
    m = 4 * _SPOTS if n * k else 0
    return torch.randint(0, max(n, 1), (m,), generator=g), torch.randint(0, max(k, 1), (m,), generator=g)


def _spot_positions(weight: Tensor, in_degrees: Tensor, out_degrees: Tensor, strict: bool):
    """``(rows, cols, live)``: 4 x ``_SPOTS`` weight positions drawn by a fixed generator (no
    lattice that could line up with the mask, such as a strict mask's zero diagonal) and
    whether each is connected (only those count: the masked-out ones never matter, nor
    move in training). All on the weight's device, computed without a device sync."""
    rows, cols = _spot_grid(*weight.shape)
    dout, din = out_degrees[rows.to(out_degrees.device)], in_degrees[cols.to(in_degrees.device)]
    live = (dout > din) if strict else (dout >= din)
    dev = weight.device
    return rows.to(dev), cols.to(dev), live.to(dev)


_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
         torch.bfloat16: torch.int16}


def _still_valid(entry: _Entry, weight: Tensor, in_degrees: Tensor, out_degrees: Tensor) -> tuple:
    """``(valid, spots_moved)``: the degree values of the build and the same spot-checked weight
    values, compared bit for bit (a NaN still NaN has not moved). The degrees are compared by
    value at every hit (a write the version counter does not see, through a NumPy array or
    another tensor sharing the memory, must not leave a stale mask); on the CPU by
    ``torch.equal``, elsewhere together with the spots in one device sync."""
    if entry.in_degrees.shape != in_degrees.shape or entry.out_degrees.shape != out_degrees.shape:
        return False, False
    now, then = torch.take(weight.detach(), entry.spot_index), entry.spot_values
    bits = _BITS.get(now.dtype)
    moved = now.view(bits) != then.view(bits) if bits is not None else (now != then) & ~(now.isnan() & then.isnan())
    moved = (moved & entry.spot_live).any()
    if all(t.device.type == "cpu" for t in (weight, in_degrees, out_degrees, entry.in_degrees)):
        same_degrees = torch.equal(entry.in_degrees, in_degrees) and torch.equal(entry.out_degrees, out_degrees)
        spots_moved = same_degrees and bool(moved)
    else:
        same = (entry.in_degrees == in_degrees).all() & (entry.out_degrees == out_degrees).all()
        same_degrees, spots_moved = torch.stack([same.to(weight.device), moved]).tolist()
    return same_degrees and not spots_moved, same_degrees and spots_moved


def _key(weight: Tensor, strict: bool, max_blocks: int):
    return (weight._version, weight.data_ptr(), tuple(weight.shape), weight.stride(), weight.dtype,
            strict, max_blocks)


def _snapshot(weight: Tensor, in_degrees: Tensor, out_degrees: Tensor, strict: bool, max_blocks: int) -> _Entry:
    """An entry recording, BEFORE a build reads the weight, its version (read first), copies
    of the degrees (the build uses these) and the spot values. An update landing during the
    build then leaves the entry invalid: a tracked in-place write (``add_``, ``copy_``,
    ``optimizer.step()``) bumps the version only after it has written, and an untracked one
    (``.data``, fused optimizers) changes the recorded spot values."""
    entry = _Entry()
    entry.key = _key(weight, strict, max_blocks)
    entry.in_degrees, entry.out_degrees = in_degrees.clone(), out_degrees.clone()
    rows, cols, entry.spot_live = _spot_positions(weight, entry.in_degrees, entry.out_degrees, strict)
    entry.spot_index = rows * weight.shape[1] + cols  # row-major positions, as torch.take reads any layout
    entry.spot_values = torch.take(weight.detach(), entry.spot_index)
    return entry


def _store(ck, entry: _Entry, weight: Tensor) -> None:
    """Publish ``entry`` unless the table holds one of a newer version of the same weight
    (a slower thread's build must not replace a faster one's newer result)."""
    with _LOCK:
        old = _CACHE.get(ck)
        if (old is not None and old.ref() is weight and old.key[1:] == entry.key[1:]
                and old.key[0] > entry.key[0]):
            return
        entry.ref = weakref.ref(weight, lambda r, ck=ck: _forget(ck, r))
        _CACHE[ck] = entry


def _forget(ck, ref) -> None:
    """Weak-reference callback: the weight died, drop its entry (unless already replaced)."""
    with _LOCK:
        entry = _CACHE.get(ck)
        if entry is not None and entry.ref is ref:
            del _CACHE[ck]


_USES = ("eval", "train", "backward")
_KINDS = ("cpp", "triton", "sorted", "nonfinite")


def mark_training(weight: Tensor) -> None:
    """A training forward that did not go through the cache (the C++ training path on sorted
    degrees, the per-step non-finite check): an optimizer step may follow that the version
    counter does not see (fused), so the next evaluation must not trust this weight's entries."""
    with _LOCK:
        for kind in _KINDS:
            entry = _CACHE.get((id(weight), kind))
            if entry is not None and entry.ref() is weight:
                entry.training = True


def _after_optimizer_step(optimizer, args, kwargs) -> None:
    """Every optimizer's step (a global post-step hook): a fused one (``Adam(fused=True)``) updates
    its parameters without bumping their version counters, so their entries are marked as after
    training and the next evaluation rebuilds, whenever the step comes (also after an evaluation
    that followed the backward). Other steps bump the versions themselves: nothing to do."""
    if not _CACHE or not any(group.get("fused") for group in optimizer.param_groups):
        return
    with _LOCK:
        cached = {ck[0] for ck in _CACHE}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in cached:
                mark_training(p)


register_optimizer_step_post_hook(_after_optimizer_step)


def _cached(kind: str, weight: Tensor, in_degrees: Tensor, out_degrees: Tensor, strict: bool, max_blocks: int,
            build, use: str = "eval"):
    """``build(in_degrees, out_degrees)``, or its cached result for this weight, its version
    and these degrees.

    ``use``: ``"train"``, a forward that records a graph: always builds (and stores the
    result for its backward); ``"backward"``: takes any valid entry; ``"eval"`` (no graph:
    evaluation, sampling): takes only entries that no training forward or backward has
    built or used, so the first evaluation after training steps rebuilds even when a fused
    optimizer (``Adam(fused=True)``) left the version counter unchanged.

    Thread safety: the version and spot values are recorded before the build (see
    :func:`_snapshot`) and a build during which the version changed is not stored, so an
    update from another thread can make that one call see either version (or, as for any
    op reading a tensor being written, a mix) but never leaves a stale entry behind.
    """
    if use not in _USES:
        raise ValueError(f"use must be one of {_USES}, got {use!r}")
    cacheable = _enabled[0] and not weight.is_inference()
    ck = (id(weight), kind)
    if cacheable and use != "train":
        entry = _CACHE.get(ck)
        if (entry is not None and entry.ref() is weight and (use == "backward" or not entry.training)
                and entry.key == _key(weight, strict, max_blocks)):
            valid, moved = _still_valid(entry, weight, in_degrees, out_degrees)
            with _LOCK:
                _stats["stale"] += moved
                _stats["hits"] += valid
            if valid:
                entry.training |= use == "backward"  # an optimizer step may follow (fused: unseen)
                return entry.prepared
    if not cacheable:
        prepared = build(in_degrees, out_degrees)
        with _LOCK:
            _stats["builds"] += 1
        return prepared
    entry = _snapshot(weight, in_degrees, out_degrees, strict, max_blocks)
    entry.prepared = build(entry.in_degrees, entry.out_degrees)
    entry.training = use != "eval"
    unchanged = entry.key == _key(weight, strict, max_blocks)
    with _LOCK:
        _stats["builds"] += 1
        _stats["discarded"] += not unchanged
    if unchanged:
        _store(ck, entry, weight)
    return entry.prepared


def _stamp(t: Tensor):
    """What identifies a degree tensor's values (None: a tensor without storage, e.g. under vmap)."""
    try:
        return t._version, t.data_ptr(), tuple(t.shape), t.dtype, t.device
    except RuntimeError:
        return None


def degree_mask_for(in_degrees: Tensor, out_degrees: Tensor, strict: bool, dtype, device) -> Tensor:
    """``degree_mask(...)`` on ``device``, built once per degree pair and kept while the two
    degree tensors live unchanged (a model's degree buffers: the mask is not rebuilt, two
    passes over [out, in], at every call). Not cached under torch.compile or jit tracing (the
    mask would be a constant of the graph), in inference mode (such a mask could not be saved for
    a later backward), under torch.func transforms (a mask made at a transform's level must not
    outlive it), for tensors without storage (vmap) or inside ``caching(False)``."""
    stamps = None
    if _enabled[0] and not (torch.compiler.is_compiling() or torch.jit.is_tracing() or transform_active()
                            or torch.is_inference_mode_enabled() or in_degrees.is_inference()
                            or out_degrees.is_inference()):
        stamps = (_stamp(in_degrees), _stamp(out_degrees))
    if stamps is None or None in stamps:
        return degree_mask(in_degrees, out_degrees, strict, dtype).to(device)
    key, slot = (*stamps, strict, dtype, torch.device(device)), id(out_degrees)
    entry = _MASKS.get(slot)
    if (entry is not None and entry[0]() is out_degrees and entry[1]() is in_degrees and entry[2] == key
            and (entry[4] is None or (torch.equal(entry[4][0], in_degrees) and torch.equal(entry[4][1], out_degrees)))):
        return entry[3]
    mask = degree_mask(in_degrees, out_degrees, strict, dtype).to(device)
    forget = lambda _ref: _MASKS.pop(slot, None)  # noqa: E731
    # CPU degrees are also compared with a copy at each hit (a `.data` write bumps no version); on a GPU
    # that comparison would synchronise every call, so there only the version counter is trusted.
    values = (in_degrees.clone(), out_degrees.clone()) if in_degrees.device.type == out_degrees.device.type == "cpu" \
        else None
    _MASKS[slot] = (weakref.ref(out_degrees, forget), weakref.ref(in_degrees), key, mask, values)
    return mask
