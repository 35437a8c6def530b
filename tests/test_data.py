"""Tests for armodel_fast.data and armodel_fast.plotting (CPU, offline, small files)."""

import gzip
import struct

import numpy as np
import pytest
import torch

from armodel_fast.data import DataSplits, iterate_minibatches, load_data
from armodel_fast.plotting import save_sample_grid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def test_digits_shapes_and_values(digits):
    assert isinstance(digits, DataSplits)
    assert digits.image_shape == (8, 8) and digits.name == "digits"
    assert not digits.dynamic
    assert digits.train.shape == (1197, 64)
    assert digits.valid.shape == (300, 64)
    assert digits.test.shape == (300, 64)
    for x in (digits.train, digits.valid, digits.test):
        assert x.dtype == torch.float32
        assert _is_binary(x)
    # Not degenerate: some pixels on, some off.
    assert 0.1 < digits.train.mean().item() < 0.9


def test_digits_split_independent_of_seed(digits):
    other = load_data("digits", seed=7)
    for a, b in ((digits.train, other.train), (digits.valid, other.valid),
                 (digits.test, other.test)):
        assert torch.equal(a, b)


def test_digits_threshold(digits):
    low = load_data("digits", threshold=0.1)
    assert low.train.sum() > digits.train.sum()
    assert torch.all(low.train >= digits.train)


def test_digits_dynamic():
    d = load_data("digits", binarize="dynamic", seed=3)
    assert d.dynamic
    assert d.train.shape == (1197, 64)
    assert d.train.min() >= 0 and d.train.max() <= 1
    assert not _is_binary(d.train)  # intensities, not 0/1
    assert _is_binary(d.valid) and _is_binary(d.test)

    # valid/test are binarized once, deterministically given the seed.
    again = load_data("digits", binarize="dynamic", seed=3)
    assert torch.equal(d.valid, again.valid) and torch.equal(d.test, again.test)
    other = load_data("digits", binarize="dynamic", seed=4)
    assert not torch.equal(d.valid, other.valid)

    # Train batches are re-sampled 0/1 and depend on the generator.
    def first_batch(seed):
        g = torch.Generator().manual_seed(seed)
        return next(iterate_minibatches(d, "train", 64, shuffle=False, generator=g))

    b0, b0_again, b1 = first_batch(0), first_batch(0), first_batch(1)
    assert b0.shape == (64, 64) and b0.dtype == torch.float32
    assert _is_binary(b0) and _is_binary(b1)
    assert torch.equal(b0, b0_again)
    assert not torch.equal(b0, b1)
    # Valid batches are not re-sampled.
    vb = next(iterate_minibatches(d, "valid", 300, shuffle=False))
    assert torch.equal(vb, d.valid)


# ---------------------------------------------------------------- minibatches


@pytest.mark.parametrize("batch_size", [1, 7, 100, 1197, 5000])
def test_minibatches_cover_every_row_once(digits, batch_size):
    g = torch.Generator().manual_seed(0)
    n = digits.train.shape[0]
    # Tag each row with its index so batches can be traced back to rows.
    tagged = DataSplits(torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 64),
                        digits.valid, digits.test, (8, 8), "tagged", False)
    seen = []
    sizes = []
    for batch in iterate_minibatches(tagged, "train", batch_size, shuffle=True, generator=g):
        sizes.append(batch.shape[0])
        seen.extend(batch[:, 0].long().tolist())
    assert sorted(seen) == list(range(n))
    assert all(s == batch_size for s in sizes[:-1]) and 0 < sizes[-1] <= batch_size
    if batch_size < n:
        assert seen != list(range(n))  # actually shuffled


def test_minibatches_unshuffled_order_and_binary(digits):
    batches = list(iterate_minibatches(digits, "test", 64, shuffle=False))
    assert torch.equal(torch.cat(batches), digits.test)
    assert all(_is_binary(b) and b.dtype == torch.float32 for b in batches)


@pytest.mark.parametrize("bad", [0, -5, 2.5, "10", True, None])
def test_minibatches_bad_batch_size(digits, bad):
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_minibatches(digits, batch_size=bad))


def test_minibatches_bad_split(digits):
    with pytest.raises(ValueError, match="split"):
        next(iterate_minibatches(digits, split="training"))


# ---------------------------------------------------------------- mnist files

SIZES = {"train": 30, "valid": 12, "test": 18}


def _rand_binary(n, seed):
    return (np.random.default_rng(seed).random((n, 784)) < 0.3).astype(np.uint8)


def _write_amat(path, x):
    path.write_text("\n".join(" ".join(str(int(v)) for v in row) for row in x) + "\n")


def _make_amat_dir(tmp_path):
    d = tmp_path / "amat"
    d.mkdir()
    arrays = {}
    for i, split in enumerate(("train", "valid", "test")):
        arrays[split] = _rand_binary(SIZES[split], i)
        _write_amat(d / f"binarized_mnist_{split}.amat", arrays[split])
    return d, arrays


def _idx_bytes(images, magic=2051):
    n, h, w = images.shape
    return struct.pack(">iiii", magic, n, h, w) + images.astype(np.uint8).tobytes()


def _make_idx_dir(tmp_path, gz, n_train=30, n_test=10, magic=2051):
    d = tmp_path / ("idx_gz" if gz else "idx")
    d.mkdir()
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    for name, x, m in (("train-images-idx3-ubyte", train, magic),
                       ("t10k-images-idx3-ubyte", test, 2051)):
        raw = _idx_bytes(x, m)
        if gz:
            with gzip.open(d / (name + ".gz"), "wb") as f:
                f.write(raw)
        else:
            (d / name).write_bytes(raw)
    return d, train.reshape(n_train, 784), test.reshape(n_test, 784)


def _check_mnist(data, sizes):
    assert data.image_shape == (28, 28) and data.name == "mnist"
    for split in ("train", "valid", "test"):
        x = getattr(data, split)
        assert x.shape == (sizes[split], 784) and x.dtype == torch.float32
        assert _is_binary(x)


def test_mnist_amat(tmp_path):
    d, arrays = _make_amat_dir(tmp_path)
    data = load_data("mnist", path=d)
    _check_mnist(data, SIZES)
    for split in ("train", "valid", "test"):
        assert np.array_equal(getattr(data, split).numpy(), arrays[split])
    # Also works with a str path and dynamic binarization (already-binary data).
    dyn = load_data("mnist", path=str(d), binarize="dynamic")
    assert dyn.dynamic and torch.equal(dyn.valid, data.valid)
    assert _is_binary(next(iterate_minibatches(dyn, batch_size=8)))


@pytest.mark.parametrize("valid_key", ["valid", "validation"])
def test_mnist_npz_binary(tmp_path, valid_key):
    arrays = {s: _rand_binary(n, i) for i, (s, n) in enumerate(SIZES.items())}
    p = tmp_path / "mnist.npz"
    np.savez(p, train=arrays["train"], test=arrays["test"], **{valid_key: arrays["valid"]})
    data = load_data("mnist", path=p)
    _check_mnist(data, SIZES)
    assert np.array_equal(data.test.numpy(), arrays["test"])


def test_mnist_npz_intensities(tmp_path):
    rng = np.random.default_rng(5)
    arrays = {s: rng.integers(0, 256, size=(n, 784), dtype=np.uint8) for s, n in SIZES.items()}
    p = tmp_path / "mnist255.npz"
    np.savez(p, **arrays)
    data = load_data("mnist", path=p, threshold=0.5)
    _check_mnist(data, SIZES)
    assert np.array_equal(data.train.numpy(), (arrays["train"] / 255.0 > 0.5).astype(np.float32))

    dyn = load_data("mnist", path=p, binarize="dynamic")
    assert dyn.dynamic and not _is_binary(dyn.train)
    assert np.allclose(dyn.train.numpy(), arrays["train"] / 255.0)
    assert _is_binary(dyn.valid) and _is_binary(dyn.test)

    # Float intensities already in [0, 1] are thresholded on that scale.
    p01 = tmp_path / "mnist01.npz"
    np.savez(p01, **{s: a.astype(np.float32) / 255.0 for s, a in arrays.items()})
    assert torch.equal(load_data("mnist", path=p01).train, data.train)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path, gz):
    d, train, test = _make_idx_dir(tmp_path, gz)
    data = load_data("mnist", path=d)
    _check_mnist(data, {"train": 25, "valid": 5, "test": 10})  # last 1/6 of 30 → valid
    expected = (train / 255.0 > 0.5).astype(np.float32)
    assert np.array_equal(data.train.numpy(), expected[:25])
    assert np.array_equal(data.valid.numpy(), expected[25:])
    assert np.array_equal(data.test.numpy(), (test / 255.0 > 0.5).astype(np.float32))
    dyn = load_data("mnist", path=d, binarize="dynamic")
    assert np.allclose(dyn.train.numpy(), train[:25] / 255.0)


# ---------------------------------------------------------------- errors


def test_mnist_requires_path():
    with pytest.raises(ValueError, match="path"):
        load_data("mnist")


def test_unknown_name_and_binarize():
    with pytest.raises(ValueError, match="name"):
        load_data("cifar")
    with pytest.raises(ValueError, match="binarize"):
        load_data("digits", binarize="stochastic")
    with pytest.raises(ValueError, match="threshold"):
        load_data("digits", threshold=2.0)


def test_missing_path(tmp_path):
    missing = tmp_path / "nope" / "mnist"
    with pytest.raises(FileNotFoundError) as e:
        load_data("mnist", path=missing)
    assert str(missing) in str(e.value)
    assert "binarized_mnist_train.amat" in str(e.value)


def test_empty_dir_and_partial_amat(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_data("mnist", path=tmp_path)
    assert str(tmp_path) in str(e.value)
    d, _ = _make_amat_dir(tmp_path)
    (d / "binarized_mnist_test.amat").unlink()
    with pytest.raises(FileNotFoundError, match="binarized_mnist_test.amat"):
        load_data("mnist", path=d)


def test_malformed_amat_columns(tmp_path):
    d, arrays = _make_amat_dir(tmp_path)
    bad = d / "binarized_mnist_valid.amat"
    _write_amat(bad, arrays["valid"][:, :783])
    with pytest.raises(ValueError) as e:
        load_data("mnist", path=d)
    assert str(bad) in str(e.value) and "783" in str(e.value)
    # Ragged rows: a valid file plus one short line.
    _write_amat(bad, arrays["valid"])
    bad.write_text(bad.read_text() + "0 1 0\n")
    with pytest.raises(ValueError, match="binarized_mnist_valid.amat"):
        load_data("mnist", path=d)


def test_malformed_amat_values(tmp_path):
    d, arrays = _make_amat_dir(tmp_path)
    x = arrays["train"].copy()
    x[3, 10] = 2
    bad = d / "binarized_mnist_train.amat"
    _write_amat(bad, x)
    with pytest.raises(ValueError, match="0 and 1") as e:
        load_data("mnist", path=d)
    assert str(bad) in str(e.value)


@pytest.mark.parametrize("gz", [False, True])
def test_bad_idx_magic(tmp_path, gz):
    d, _, _ = _make_idx_dir(tmp_path, gz, magic=2049)  # label-file magic
    with pytest.raises(ValueError, match="magic") as e:
        load_data("mnist", path=d)
    assert "train-images-idx3-ubyte" in str(e.value) and str(d) in str(e.value)


def test_truncated_idx(tmp_path):
    d, _, _ = _make_idx_dir(tmp_path, gz=False)
    f = d / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte"):
        load_data("mnist", path=d)


def test_npz_missing_key(tmp_path):
    p = tmp_path / "partial.npz"
    np.savez(p, train=_rand_binary(4, 0), test=_rand_binary(4, 1))
    with pytest.raises(ValueError, match="valid") as e:
        load_data("mnist", path=p)
    assert str(p) in str(e.value)


def test_npz_bad_dtype_and_shape(tmp_path):
    p = tmp_path / "strings.npz"
    np.savez(p, train=np.array([["a"] * 784]), valid=_rand_binary(2, 0), test=_rand_binary(2, 1))
    with pytest.raises(ValueError, match="dtype") as e:
        load_data("mnist", path=p)
    assert str(p) in str(e.value)
    p = tmp_path / "short.npz"
    np.savez(p, train=np.zeros((3, 100)), valid=_rand_binary(2, 0), test=_rand_binary(2, 1))
    with pytest.raises(ValueError, match="784"):
        load_data("mnist", path=p)


def test_not_an_npz(tmp_path):
    p = tmp_path / "garbage.npz"
    p.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="garbage.npz"):
        load_data("mnist", path=p)
    txt = tmp_path / "mnist.txt"
    txt.write_text("hello")
    with pytest.raises(ValueError, match="mnist.txt"):
        load_data("mnist", path=txt)


# ---------------------------------------------------------------- plotting


def test_save_sample_grid(tmp_path, digits):
    import matplotlib.image

    out = tmp_path / "nested" / "dir" / "grid.png"
    ret = save_sample_grid(digits.train[:23], (8, 8), out, nrow=5, title="digits")
    assert ret == out and out.is_file()
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[0] > 8 and img.shape[1] > 8

    # numpy input, [0, 1] intensities, default nrow, str path.
    out2 = tmp_path / "grid2.png"
    save_sample_grid(np.random.default_rng(0).random((10, 784)), (28, 28), str(out2))
    assert out2.read_bytes()[:8] == PNG_SIGNATURE


def test_save_sample_grid_rejects_wrong_dim(tmp_path, digits):
    with pytest.raises(ValueError, match=r"^x must have shape \[N, 64\]"):
        save_sample_grid(digits.train[:4, :60], (8, 8), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
