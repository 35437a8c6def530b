"""Binary image datasets for autoregressive density models.

Two sources are supported:

* ``"digits"``: scikit-learn's bundled 8x8 handwritten digits (offline, D=64).
* ``"mnist"``: binarized MNIST (28x28, D=784) read from a local ``path``: a
  directory of Larochelle ``.amat`` files, an ``.npz`` file, or a directory of
  IDX files (optionally gzipped).

Every split is a float32 tensor of shape [N, D] holding 0/1 values, except the
training split of a *dynamically* binarized dataset, which holds intensities in
[0, 1] and is re-binarized per minibatch by :func:`iterate_minibatches`.
"""

from __future__ import annotations

import gzip
import numbers
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

AMAT_FILES = ("binarized_mnist_train.amat", "binarized_mnist_valid.amat",
              "binarized_mnist_test.amat")
IDX_FILES = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
IDX_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
MNIST_SHAPE = (28, 28)


@dataclass
class DataSplits:
    """Train/valid/test splits of a binary image dataset.

    Attributes:
        train: float32 [N_train, D]; 0/1 values, or intensities in [0, 1] when
            ``dynamic`` is True (re-binarized per minibatch).
        valid: float32 [N_valid, D], 0/1 values.
        test: float32 [N_test, D], 0/1 values.
        image_shape: (h, w) with h * w == D.
        name: dataset name ("digits" or "mnist").
        dynamic: whether ``train`` holds intensities for dynamic binarization.
    """

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    image_shape: tuple[int, int]
    name: str
    dynamic: bool

    @property
    def dim(self) -> int:
        """Number of pixels D = h * w."""
        return self.image_shape[0] * self.image_shape[1]


def load_data(name: str = "digits", path=None, binarize: str = "fixed",
              threshold: float = 0.5, seed: int = 0) -> DataSplits:
    """Load a dataset as binary [N, D] float32 splits.

    Args:
        name: "digits" (sklearn, 1197/300/300 split, 8x8) or "mnist" (28x28).
        path: for "mnist", a directory of ``.amat`` or IDX files, or an ``.npz``.
        binarize: "fixed" (``x > threshold`` for every split) or "dynamic"
            (train keeps intensities; valid/test are sampled once with a
            ``torch.Generator`` seeded by ``seed``).
        threshold: threshold in [0, 1] intensity scale for "fixed".
        seed: seed for the one-off binarization of valid/test in "dynamic".
            The train/valid/test split itself never depends on it.

    Sources that are already 0/1 (``.amat``, 0/1 ``.npz``) are kept as they are.
    """
    if binarize not in ("fixed", "dynamic"):
        raise ValueError(f"binarize must be 'fixed' or 'dynamic', got {binarize!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) \
            or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    if name == "digits":
        splits, shape, is_binary = _load_digits(), (8, 8), False
    elif name == "mnist":
        if path is None:
            raise ValueError("name='mnist' requires a path: a directory of .amat "
                             "or IDX files, or an .npz file")
        splits, is_binary = _load_mnist(os.fspath(path))
        shape = MNIST_SHAPE
    else:
        raise ValueError(f"unknown dataset name {name!r}; expected 'digits' or 'mnist'")

    dim = shape[0] * shape[1]
    for split, x in zip(("train", "valid", "test"), splits):
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"{name} {split} split has shape {x.shape}, "
                             f"expected [N, {dim}] for image shape {shape}")
    train, valid, test = (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
                          for x in splits)
    dynamic = binarize == "dynamic"
    if not is_binary:
        if dynamic:
            gen = torch.Generator().manual_seed(int(seed))
            valid = torch.bernoulli(valid, generator=gen)
            test = torch.bernoulli(test, generator=gen)
        else:
            train, valid, test = ((x > threshold).float() for x in (train, valid, test))
    return DataSplits(train, valid, test, shape, name, dynamic)


def iterate_minibatches(data: DataSplits, split: str = "train", batch_size: int = 100,
                        shuffle: bool = True,
                        generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Yield float32 0/1 batches of shape [b, D] covering the split once.

    The last batch may be smaller than ``batch_size``. ``generator`` drives
    both the shuffle and, for ``split="train"`` of a dynamic dataset, the
    per-batch ``torch.bernoulli`` re-binarization.
    """
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    x = getattr(data, split)
    n = x.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    resample = split == "train" and data.dynamic
    for start in range(0, n, batch_size):
        batch = x[order[start:start + batch_size]]
        if resample:
            batch = torch.bernoulli(batch, generator=generator)
        yield batch


# ----------------------------------------------------------------------------
# digits


def _load_digits():
    """sklearn digits as intensities x/16, split 1197/300/300 with a fixed shuffle."""
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32) / 16.0  # [1797, 64]
    perm = np.random.default_rng(1234).permutation(x.shape[0])
    x = x[perm]
    return (x[:1197], x[1197:1497], x[1497:])


# ----------------------------------------------------------------------------
# MNIST


def _load_mnist(path: str):
    """Dispatch on the layout at ``path``; returns ((train, valid, test), is_binary)."""
    expected = (f"an .npz file, or a directory holding either {', '.join(AMAT_FILES)} "
                f"or {' and '.join(IDX_FILES)} (optionally .gz)")
    if not os.path.exists(path):
        raise FileNotFoundError(f"MNIST path {path!r} does not exist; expected {expected}")
    if os.path.isfile(path):
        if not path.endswith(".npz"):
            raise ValueError(f"MNIST file {path!r} is not an .npz file; expected {expected}")
        return _load_npz(path)
    if any(os.path.exists(os.path.join(path, f)) for f in AMAT_FILES):
        missing = [f for f in AMAT_FILES if not os.path.exists(os.path.join(path, f))]
        if missing:
            raise FileNotFoundError(f"MNIST directory {path!r} is missing {missing}")
        return tuple(_load_amat(os.path.join(path, f)) for f in AMAT_FILES), True
    idx = [_find_idx(path, f) for f in IDX_FILES]
    if any(idx):
        if not all(idx):
            missing = [f for f, p in zip(IDX_FILES, idx) if p is None]
            raise FileNotFoundError(f"MNIST directory {path!r} is missing {missing} "
                                    "(plain or .gz)")
        return _load_idx_splits(*idx), False
    raise FileNotFoundError(f"MNIST directory {path!r} has no dataset files; "
                            f"expected {expected}")


def _load_amat(path: str) -> np.ndarray:
    """One Larochelle ``.amat`` file: lines of 784 space-separated 0/1 → [N, 784]."""
    try:
        x = np.loadtxt(path, dtype=np.float32, ndmin=2)
    except ValueError as e:
        raise ValueError(f"malformed .amat file {path!r}: {e}") from e
    if x.shape[0] == 0:
        raise ValueError(f"malformed .amat file {path!r}: no rows")
    if x.shape[1] != 784:
        raise ValueError(f"malformed .amat file {path!r}: {x.shape[1]} columns, expected 784")
    if not np.isin(x, (0.0, 1.0)).all():
        raise ValueError(f"malformed .amat file {path!r}: values other than 0 and 1")
    return x


def _load_npz(path: str):
    """An ``.npz`` with ``train``, ``valid``/``validation``, ``test`` arrays [N, 784].

    Values may be 0/1 (kept), 0..1 intensities, or 0..255 intensities (/255).
    Returns ((train, valid, test), is_binary).
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = sorted(f.files)
            arrays = {k: f[k] for k in ("train", "valid", "validation", "test") if k in keys}
    except (ValueError, OSError) as e:  # not a zip archive, pickled objects, ...
        raise ValueError(f"cannot read npz file {path!r}: {e}") from e
    valid_key = "valid" if "valid" in arrays else "validation"
    missing = [k for k in ("train", valid_key, "test") if k not in arrays]
    if missing:
        raise ValueError(f"npz file {path!r} is missing array(s) {missing}; found {keys}")

    out = []
    for key in ("train", valid_key, "test"):
        x = arrays[key]
        if not (x.dtype == np.bool_ or np.issubdtype(x.dtype, np.integer)
                or np.issubdtype(x.dtype, np.floating)):
            raise ValueError(f"npz file {path!r}: array {key!r} has dtype {x.dtype}, "
                             "expected bool, integer or float")
        if x.ndim == 3 and x.shape[1:] == MNIST_SHAPE:
            x = x.reshape(x.shape[0], -1)
        if x.ndim != 2 or x.shape[1] != 784:
            raise ValueError(f"npz file {path!r}: array {key!r} has shape {x.shape}, "
                             "expected [N, 784]")
        x = x.astype(np.float32)
        if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 255):
            raise ValueError(f"npz file {path!r}: array {key!r} has values outside [0, 255]")
        out.append(x)
    if max(float(x.max()) if x.size else 0.0 for x in out) > 1.0:
        out = [x / 255.0 for x in out]  # 0..255 intensities
    is_binary = all(np.isin(x, (0.0, 1.0)).all() for x in out)
    return tuple(out), is_binary


def _find_idx(directory: str, name: str) -> str | None:
    """Path of ``name`` or ``name.gz`` inside ``directory``, or None."""
    for candidate in (name, name + ".gz"):
        p = os.path.join(directory, candidate)
        if os.path.isfile(p):
            return p
    return None


def _read_idx_images(path: str) -> np.ndarray:
    """IDX3 unsigned-byte images (optionally gzipped) → float32 [N, rows*cols] in [0, 1]."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:  # includes gzip.BadGzipFile
        raise ValueError(f"cannot read IDX file {path!r}: {e}") from e
    if len(raw) < 16:
        raise ValueError(f"IDX file {path!r} is too short for a header ({len(raw)} bytes)")
    magic, n, rows, cols = (int(v) for v in np.frombuffer(raw[:16], dtype=">i4"))
    if magic != IDX_MAGIC:
        raise ValueError(f"IDX file {path!r} has bad magic number {magic:#010x}, "
                         f"expected {IDX_MAGIC:#010x}")
    if (rows, cols) != MNIST_SHAPE:
        raise ValueError(f"IDX file {path!r} holds {rows}x{cols} images, expected 28x28")
    if len(raw) - 16 != n * rows * cols:
        raise ValueError(f"IDX file {path!r} has {len(raw) - 16} data bytes, "
                         f"expected {n * rows * cols} for {n} images")
    x = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows * cols)
    return x.astype(np.float32) / 255.0


def _load_idx_splits(train_path: str, test_path: str):
    """Train IDX → train + valid (last 10000, or last 1/6 if < 60000 rows); t10k → test."""
    full = _read_idx_images(train_path)
    test = _read_idx_images(test_path)
    n = full.shape[0]
    n_valid = 10000 if n >= 60000 else n // 6
    if n_valid < 1 or test.shape[0] < 1:
        raise ValueError(f"IDX files {train_path!r} ({n} rows) and {test_path!r} "
                         f"({test.shape[0]} rows) are too small to split")
    return full[:-n_valid], full[-n_valid:], test
