"""Save a grid of binary (or [0, 1] intensity) image samples as a PNG.

Uses ``matplotlib.figure.Figure`` with the Agg canvas directly, so no pyplot
global state or interactive backend is touched.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ._files import save_figure


def _to_numpy(x) -> np.ndarray:
    """Tensor or array-like → float32 numpy array (on CPU, detached)."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch here
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def save_sample_grid(x, image_shape, path, nrow=None, title=None) -> Path:
    """Write samples ``x`` as a grid of grayscale images to a PNG at ``path``.

    Args:
        x: [N, D] tensor or array of 0/1 values or [0, 1] intensities
            (a single [D] image is also accepted).
        image_shape: (h, w) with h * w == D.
        path: output file; parent directories are created. Written as PNG.
        nrow: images per grid row (default: ceil(sqrt(N))).
        title: optional figure title.

    Returns:
        ``pathlib.Path`` of the written file.
    """
    h, w = (int(v) for v in image_shape)
    arr = _to_numpy(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[-1] != h * w:
        raise ValueError(f"x must have shape [N, {h * w}] for image_shape {(h, w)}, "
                         f"got {tuple(arr.shape)}")
    n = arr.shape[0]
    if n == 0:
        raise ValueError("x holds no images (N == 0)")
    if not np.isfinite(arr).all():
        raise ValueError("x contains NaN or infinite values")
    if nrow is None:
        nrow = math.ceil(math.sqrt(n))
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow <= 0:
        raise ValueError(f"nrow must be a positive int, got {nrow!r}")
    ncol = min(nrow, n)
    nrows = math.ceil(n / ncol)

    # Mosaic with a 1-pixel border of mid-gray between images.
    pad = 1
    grid = np.full((nrows * (h + pad) + pad, ncol * (w + pad) + pad), 0.5, np.float32)
    images = np.clip(arr, 0.0, 1.0).reshape(n, h, w)
    for i in range(n):
        r, c = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top:top + h, left:left + w] = images[i]

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    px = max(1, math.ceil(400 / max(grid.shape)))  # screen pixels per grid pixel
    width, height = grid.shape[1] * px / dpi, grid.shape[0] * px / dpi  # inches
    title_h = 0.4 if title else 0.0
    fig = Figure(figsize=(width, height + title_h), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, height / (height + title_h)))
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(str(title), fontsize=10, y=0.99, va="top")

    out = Path(path)
    save_figure(fig, out)
    return out


def save_learning_curve(records, path, D=None) -> Path:
    """PNG of train and validation NLL (nats) against the step, from metrics.jsonl records."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for key, label in (("train_nll", "train (running mean)"), ("valid_nll", "validation")):
        pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="." if len(pts) < 50 else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("NLL (nats" + (f", D={D})" if D else ")"))
    ax.grid(alpha=0.3)
    ax.legend()
    out = Path(path)
    save_figure(fig, out)
    return out
