"""Crash-safe checkpoint files.

Writes go to a temporary file in the same folder, are flushed and fsynced, then
renamed over the target (``os.replace`` is atomic on POSIX), and the folder is
fsynced: a reader sees the old file or the new one, never a torn one. A file
is a dict with ``format`` = :data:`FORMAT` and a SHA-256 of its payload, so a
truncated or corrupt file is refused with its path named.
"""
from __future__ import annotations

import hashlib
import io
import os
import random

import numpy as np
import torch

from .._files import atomic_write_bytes

FORMAT = "armodel-fast-checkpoint-v2"
MODEL_KEYS = ("config", "state_dict", "image_shape", "metrics")


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged or does not fit; the message names the file."""


def save(path: str, obj: dict) -> None:
    """``torch.save(obj)`` wrapped with a format tag and checksum, written atomically. Two buffers,
    the payload and the file's bytes, each written once (a 620 MB checkpoint of a 2x8000 MADE held
    four copies). The file is written from memory, not by torch.save, so a full disk raises the
    OSError itself."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    body = buf.getbuffer()  # a view, not a copy
    outer = io.BytesIO()
    torch.save({"format": FORMAT, "sha256": hashlib.sha256(body).hexdigest(),
                "payload": torch.frombuffer(body, dtype=torch.uint8)}, outer)
    del body, buf
    atomic_write_bytes(path, outer.getbuffer())


def load(path: str, what: str = "checkpoint") -> dict:
    """The dict :func:`save` wrote (or an older plain armodel-fast checkpoint)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} {path} not found")
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"{what} {path} is truncated or not a torch.save file "
                              f"({type(e).__name__}); delete it or point at another run") from None
    if isinstance(outer, dict) and outer.get("format") == FORMAT:
        body = outer["payload"].numpy()  # (hashed and read in place)
        if hashlib.sha256(body).hexdigest() != outer.get("sha256"):
            raise CheckpointError(f"{what} {path} is corrupt (checksum mismatch); delete it or "
                                  "point at another run")
        return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    if isinstance(outer, dict) and all(k in outer for k in MODEL_KEYS):
        return outer  # a checkpoint from before v2
    raise CheckpointError(f"{what} {path} is not an armodel-fast checkpoint (expected a dict with "
                          f"keys {MODEL_KEYS}); give a model.pt written by `armodel-fast train`")


def rng_states() -> dict:
    """Every global RNG, in types ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    cuda = [t for t in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "cuda": cuda,
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(tuple(states["python"][:1]) + (tuple(states["python"][1]),) + tuple(states["python"][2:]))
