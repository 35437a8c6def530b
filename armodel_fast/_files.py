"""Writing user-visible files without ever destroying a good one.

Every file the package writes (checkpoints, metrics, JSON, markdown, PNGs) goes to a
temporary file in the same folder, is flushed and fsynced, then renamed over the target
(``os.replace`` is atomic on POSIX) and the folder fsynced: a reader, or a later run,
sees the old file or the new one, never a torn one; a failed write leaves the old file.
"""
from __future__ import annotations

import io
import os


def atomic_write_bytes(path: str, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (module docstring)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_figure(fig, path, **savefig_kwargs) -> None:
    """``fig.savefig`` (a PNG unless ``format=`` says otherwise) into memory, then written atomically."""
    buf = io.BytesIO()
    savefig_kwargs.setdefault("format", "png")
    fig.savefig(buf, **savefig_kwargs)
    atomic_write_bytes(os.fspath(path), buf.getvalue())
