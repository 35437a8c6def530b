"""The data a run trains on: built-ins (digits, MNIST) or the user's own file.

A :class:`Dataset` holds three :class:`Split` views of 2-D numpy arrays (a
``.npy`` stays memory-mapped: rows are gathered per minibatch) and the data
``kind`` (binary / categorical / real) a model must accept. ``Dataset.batch``
turns rows into the tensor a model takes: float 0/1, int64 classes or float reals.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import data as builtin

KINDS = ("binary", "categorical", "real")
EXTENSIONS = (".npy", ".npz", ".pt", ".csv")
BINARIZE = ("fixed", "dynamic", "stochastic")
SCAN_ROWS = 65536  # rows read at a time when scanning a memory-mapped file


class DataError(ValueError):
    """A data problem the user can fix; the message names the file and the fix."""


@dataclass
class Split:
    """Rows ``rows`` (None: all) of the 2-D array ``array`` (possibly a memmap)."""
    array: np.ndarray
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return self.array.shape[0] if self.rows is None else len(self.rows)

    def take(self, idx) -> np.ndarray:
        """Rows ``idx`` (positions within the split) as an in-memory array."""
        idx = np.asarray(idx, dtype=np.int64)
        return np.asarray(self.array[idx if self.rows is None else self.rows[idx]])

    def chunks(self, size: int = SCAN_ROWS):
        for start in range(0, len(self), size):
            yield self.take(np.arange(start, min(start + size, len(self))))


@dataclass
class Dataset:
    """Train/valid/test splits plus how their values become model input.

    ``threshold``: binarize raw values as ``x > threshold``; ``dynamic``: raw
    values in [0, 1] are Bernoulli probabilities resampled every minibatch.
    """
    train: Split
    valid: Split
    test: Split
    kind: str
    name: str
    K: int | None = None
    image_shape: tuple | None = None
    threshold: float | None = None
    dynamic: bool = False
    scale: float = 1.0  # raw values are divided by this first (255 for bytes)
    spec: dict = field(default_factory=dict)  # how to load it again (stored in checkpoints)

    @property
    def dim(self) -> int:
        return int(self.train.array.shape[1])

    def split(self, name: str) -> Split:
        if name not in ("train", "valid", "test"):
            raise DataError(f"--split must be train, valid or test, got {name!r}")
        return getattr(self, name)

    def batch(self, split: str, idx, generator: torch.Generator | None = None) -> torch.Tensor:
        """Rows ``idx`` of ``split`` as model input [len(idx), D]."""
        raw = torch.from_numpy(np.ascontiguousarray(self.split(split).take(idx)))
        if self.kind == "categorical":
            return raw.long()
        x = raw.float()
        if self.kind == "binary":
            if self.dynamic:  # train resampled every minibatch; valid/test were sampled at load
                return torch.bernoulli(x / self.scale, generator=generator) if split == "train" else x
            if self.threshold is not None:
                return (x / self.scale > self.threshold).float()
        return x

    def ordered_batches(self, split: str, batch_size: int):
        """Every row of ``split`` in order, ``batch_size`` rows at a time."""
        n = len(self.split(split))
        for start in range(0, n, batch_size):
            yield self.batch(split, np.arange(start, min(start + batch_size, n)))


# ---------------------------------------------------------------------------- type and checks
MAX_CLASSES = 1 << 16  # categorical levels (K): beyond, the D x K output layer would not fit anywhere


def infer_kind(split: Split) -> tuple[str, int]:
    """('binary'|'categorical'|'real', max value + 1) read from the values."""
    is_binary = is_integer = True
    top = 0.0
    for chunk in split.chunks():
        if chunk.size == 0:
            continue
        if np.issubdtype(chunk.dtype, np.floating):
            if is_integer and not np.array_equal(chunk, np.round(chunk)):
                is_integer = is_binary = False
        is_binary = is_binary and bool(np.isin(chunk, (0, 1)).all())
        is_integer = is_integer and float(chunk.min()) >= 0
        top = max(top, float(chunk.max()))
    if is_binary:
        return "binary", 2
    if is_integer:
        return "categorical", int(top) + 1
    return "real", 0


def check_values(split: Split, where: str) -> None:
    """Numeric and finite, or a DataError naming the file and the first bad row."""
    if not (np.issubdtype(split.array.dtype, np.number) or split.array.dtype == np.bool_):
        raise DataError(f"{where}: values of dtype {split.array.dtype} are not numbers; "
                        "save a numeric array")
    if np.issubdtype(split.array.dtype, np.floating):
        offset = 0
        for chunk in split.chunks():
            bad = ~np.isfinite(chunk).all(axis=1)
            if bad.any():
                pos = offset + int(np.argmax(bad))
                row = pos if split.rows is None else int(split.rows[pos])
                raise DataError(f"{where}: row {row} holds NaN or inf; "
                                "remove or impute those rows")
            offset += len(chunk)


# ---------------------------------------------------------------------------- user files
def _split_rows(n: int, fractions, seed: int, where: str):
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise DataError(f"--split must be three fractions summing to 1 (train,valid,test), got {fractions}")
    perm = np.random.default_rng(int(seed)).permutation(n)
    n_train, n_valid = int(round(fr[0] * n)), int(round(fr[1] * n))
    return perm[:n_train], perm[n_train:n_train + n_valid], perm[n_train + n_valid:]


def _as_2d(a: np.ndarray, where: str) -> np.ndarray:
    if a.ndim >= 3:
        a = a.reshape(a.shape[0], -1)
    if a.ndim != 2:
        raise DataError(f"{where}: array of shape {tuple(a.shape)}; expected [N, D] (or [N, h, w])")
    return a


def _read_csv(path: str) -> np.ndarray:
    with open(path) as f:
        first = f.readline()
    try:
        [float(v) for v in first.strip().split(",") if v.strip()]
        skip = 0
    except ValueError:
        skip = 1  # a header line
    try:
        return np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise DataError(f"--data {path}: not a rectangular numeric CSV ({e}); every row needs "
                        "the same number of comma-separated numbers") from None


def _read_pt(path: str):
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise DataError(f"--data {path}: cannot read it as a torch.save file ({type(e).__name__}); "
                        "save a tensor or a dict of train/valid/test tensors") from None
    conv = (lambda t: t.numpy() if isinstance(t, torch.Tensor) else t)
    if isinstance(obj, dict):
        return {k: conv(v) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        return conv(obj)
    raise DataError(f"--data {path}: holds a {type(obj).__name__}; save a tensor or a dict "
                    "of train/valid/test tensors")


def _read_file(path: str):
    """An array (to be split) or a dict with train/valid/test arrays."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise DataError(f"--data {path}: unknown extension {ext or '(none)'!r}; use one of "
                        f"{', '.join(EXTENSIONS)}, or digits / mnist")
    if not os.path.isfile(path):
        raise DataError(f"--data {path}: no such file; check the path")
    if ext == ".npy":
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(f"--data {path}: not a readable .npy file ({e})") from None
    if ext == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (ValueError, OSError) as e:
            raise DataError(f"--data {path}: not a readable .npz file ({e})") from None
        return arrays if len(arrays) != 1 else next(iter(arrays.values()))
    return _read_pt(path) if ext == ".pt" else _read_csv(path)


def load_user_file(path: str, split=(0.8, 0.1, 0.1), seed: int = 0):
    """Splits of a user's file: ``(train, valid, test)`` as :class:`Split`."""
    obj = _read_file(path)
    if isinstance(obj, dict):
        if "validation" in obj and "valid" not in obj:
            obj["valid"] = obj["validation"]
        missing = [k for k in ("train", "valid") if k not in obj]
        if missing:
            raise DataError(f"--data {path}: has keys {sorted(obj)} but no {missing}; use keys "
                            "train/valid/test, or one array split by --split")
        arrays = [_as_2d(np.asarray(obj[k]), f"--data {path} [{k}]") for k in ("train", "valid")]
        test = obj.get("test")
        test = _as_2d(np.asarray(test), f"--data {path} [test]") if test is not None \
            else np.zeros((0, arrays[0].shape[1]), arrays[0].dtype)
        if len({a.shape[1] for a in arrays + [test]}) != 1:
            raise DataError(f"--data {path}: train/valid/test have different widths "
                            f"{[a.shape[1] for a in arrays + [test]]}; every split needs the same D")
        return Split(arrays[0]), Split(arrays[1]), Split(test)
    a = _as_2d(obj, f"--data {path}")
    return tuple(Split(a, rows) for rows in _split_rows(a.shape[0], split, seed, path))


# ---------------------------------------------------------------------------- built-ins
def _digits(kind: str, seed: int):
    train, valid, test = builtin._load_digits()  # intensities x/16 in [0, 1]
    if kind == "categorical":
        return [np.rint(x * 16).astype(np.int64) for x in (train, valid, test)], 17
    if kind == "real":  # dequantised: (level + u) / 17, u ~ U(0, 1) drawn once from seed
        rng = np.random.default_rng(int(seed))
        return [((np.rint(x * 16) + rng.random(x.shape)) / 17).astype(np.float32)
                for x in (train, valid, test)], 0
    return [train, valid, test], 2


def _mnist(path: str):
    """MNIST intensities in [0, 1]: an IDX train-images file (first 50,000 train, last
    10,000 valid, no test) or what :func:`armodel_fast.data.load_data` reads."""
    if path is None:
        raise DataError("--data mnist needs --data-path: the train-images IDX file (.gz), an .npz, "
                        "or a directory of .amat / IDX files")
    if os.path.isfile(path) and "idx3" in os.path.basename(path):
        try:
            x = builtin._read_idx_images(path)
        except ValueError as e:
            raise DataError(f"--data-path {path}: {e}") from None
        if x.shape[0] < 20000:
            raise DataError(f"--data-path {path}: {x.shape[0]} images; a train-only IDX file needs "
                            "more than 20,000 (the last 10,000 are the validation split)")
        return [x[:-10000], x[-10000:], x[:0]]
    try:
        d = builtin.load_data("mnist", path, binarize="dynamic")
    except (OSError, ValueError) as e:
        raise DataError(f"--data-path {path}: {e}") from None
    return [d.train.numpy(), d.valid.numpy(), d.test.numpy()]


def _binarizer(binarize, raw: list, seed: int, where: str) -> dict:
    """Dataset fields (threshold/dynamic/scale) and maybe new splits for --binarize."""
    if binarize is None or binarize in BINARIZE:
        top = max((float(s.max()) for s in raw if s.size), default=0.0)
        scale = 255.0 if top > 1.0 else 1.0
        if top > 255.0:
            raise DataError(f"{where}: --binarize {binarize or 'fixed'} needs values in [0, 1] "
                            f"(or bytes 0..255), found up to {top:g}; give a number: --binarize T")
        if binarize == "stochastic":  # every split sampled once from seed
            rng = np.random.default_rng(int(seed))
            return {"splits": [(rng.random(s.shape) < s / scale).astype(np.float32) for s in raw]}
        if binarize == "dynamic":  # valid/test are sampled once, from seed
            rng = np.random.default_rng(int(seed))
            return {"dynamic": True, "scale": scale, "eval_splits":
                    [(rng.random(s.shape) < s / scale).astype(np.float32) for s in raw[1:]]}
        return {"threshold": 0.5, "scale": scale}
    t = float(binarize)
    lo = min((float(s.min()) for s in raw if s.size), default=0.0)
    hi = max((float(s.max()) for s in raw if s.size), default=0.0)
    if not lo <= t < hi:  # x > t would make every value 1 (t < lo) or 0 (t >= hi)
        raise DataError(f"{where}: --binarize {binarize} makes every value {1 if t < lo else 0} (the values lie "
                        f"in [{lo:g}, {hi:g}]); give a threshold in [{lo:g}, {hi:g})")
    return {"threshold": t}


def load_dataset(source: str, data_path=None, data_type=None, binarize=None, split=(0.8, 0.1, 0.1),
                 K=None, seed: int = 0) -> Dataset:
    """Load ``source`` ("digits", "mnist" or a file path) as a :class:`Dataset`.

    ``data_type`` forces the kind (otherwise read from the values); ``binarize``
    ("fixed", "dynamic", "stochastic" or a threshold) turns reals into 0/1.
    """
    spec = {"source": source, "data_path": data_path, "data_type": data_type, "binarize": binarize,
            "split": list(split), "K": K, "seed": int(seed)}
    if data_type is not None and data_type not in KINDS:
        raise DataError(f"--data-type must be one of {KINDS}, got {data_type!r}")
    where = f"--data {source}"
    shape = None
    if source == "digits":
        arrays, _ = _digits(data_type or "binary", seed)
        splits, shape = [Split(a) for a in arrays], (8, 8)
        if data_type in (None, "binary") and binarize is None:
            binarize = "fixed"
    elif source == "mnist":
        splits, shape = [Split(a) for a in _mnist(data_path)], (28, 28)
        if data_type in (None, "binary") and binarize is None:
            binarize = "dynamic"
        where = f"--data-path {data_path}"
    else:
        splits = list(load_user_file(source, split, seed))
        side = int(round(splits[0].array.shape[1] ** 0.5))
        shape = (side, side) if side * side == splits[0].array.shape[1] else None
    for name, s in zip(("train", "valid"), splits):
        if len(s) == 0:
            raise DataError(f"{where}: the {name} split is empty; give more rows or change --split")
    for s in splits:
        check_values(s, where)
    kind, top = infer_kind(splits[0])
    fields = {}
    if binarize is not None:
        if kind == "real" or (kind == "categorical" and data_type in (None, "binary")):
            n_head = len(splits[0]) if binarize == "stochastic" else min(len(splits[0]), SCAN_ROWS)
            raw = [s.take(np.arange(n)) for s, n in zip(splits, (n_head, len(splits[1]), len(splits[2])))]
            fields = _binarizer(binarize, raw, seed, where)
            if "splits" in fields:
                splits = [Split(a) for a in fields.pop("splits")]
            if "eval_splits" in fields:
                splits = splits[:1] + [Split(a) for a in fields.pop("eval_splits")]
            kind = "binary"
    if data_type is not None and data_type != kind:
        widens = (data_type == "real" and kind in ("binary", "categorical")) or (data_type, kind) == (
            "categorical", "binary")  # 0/1 are the levels of two classes
        if not widens:
            raise DataError(f"{where}: --data-type {data_type} but the values are {kind}"
                            f"{' (use --binarize to threshold reals)' if data_type == 'binary' else ''}")
        kind = data_type
    if kind == "categorical":
        for s in splits[1:]:
            if len(s):
                top = max(top, infer_kind(s)[1])
        if K is not None and top > int(K):
            raise DataError(f"{where}: labels go up to {top - 1} but --K is {K}; labels must lie in "
                            f"[0, K): use --K {top}")
        K = int(K) if K is not None else max(top, 2)
        if K > MAX_CLASSES:
            raise DataError(f"{where}: {K} classes (labels up to {top - 1}) is more than the {MAX_CLASSES} a "
                            "categorical model here takes (its output layer has D x K units); map the values to "
                            "fewer levels, or treat them as reals with --data-type real")
    return Dataset(*splits, kind=kind, name=os.path.basename(str(source)), K=K, image_shape=shape,
                   spec=spec, **fields)


def check_compatible(data: Dataset, model_name: str, model_kind: str, source: str) -> None:
    """A model of ``model_kind`` can train on ``data``, or a DataError with the fix."""
    if data.kind == model_kind:
        return
    fixes = {"binary": "--binarize THRESHOLD (or fixed/dynamic) to make it 0/1",
             "categorical": "integer labels in [0, K) (or --data-type categorical)",
             "real": "--data-type real"}
    other = {"binary": "nade, fvsbn, arrnn or made --head bernoulli",
             "categorical": "categorical-nade or made --head categorical",
             "real": "rnade or made --head gaussian"}[data.kind]
    raise DataError(f"--data {source}: its values are {data.kind} but --model {model_name} takes "
                    f"{model_kind} data; use {fixes[model_kind]}, or a model for {data.kind} data: {other}")
