"""The user's data: file formats, the kind read from the values, splits, and the errors."""
import numpy as np
import pytest
import torch

from armodel_fast.cli import main
from armodel_fast.training.datasets import DataError, load_dataset
from train_helpers import one_error_line


def _binary(n=60, D=16, seed=0):
    return (np.random.default_rng(seed).random((n, D)) < 0.3).astype(np.float32)


def test_npy_is_memory_mapped_and_kinds_are_read_from_values(tmp_path):
    for arr, kind, K in [(_binary(), "binary", None), (np.random.default_rng(1).integers(0, 5, (60, 9)),
                                                       "categorical", 5),
                         (np.random.default_rng(2).normal(size=(60, 4)).astype(np.float32), "real", None)]:
        path = tmp_path / f"{kind}.npy"
        np.save(path, arr)
        d = load_dataset(str(path), split=(0.5, 0.25, 0.25), seed=3)
        assert isinstance(d.train.array, np.memmap)
        assert d.kind == kind and d.K == K and d.dim == arr.shape[1]
        assert (len(d.train), len(d.valid), len(d.test)) == (30, 15, 15)
        rows = np.concatenate([d.train.rows, d.valid.rows, d.test.rows])
        assert sorted(rows) == list(range(60))  # a partition, drawn from the seed
        x = d.batch("train", [0, 1])
        assert torch.equal(x, torch.as_tensor(arr[d.train.rows[:2]]).to(x.dtype))
        assert x.dtype == (torch.long if kind == "categorical" else torch.float32)


def test_npz_pt_and_csv_sources(tmp_path):
    a = _binary()
    np.savez(tmp_path / "d.npz", train=a[:40], valid=a[40:50], test=a[50:])
    torch.save({"train": torch.from_numpy(a[:40]), "valid": torch.from_numpy(a[40:])}, tmp_path / "d.pt")
    np.savetxt(tmp_path / "d.csv", a, delimiter=",", header=",".join(f"p{i}" for i in range(16)), comments="")
    npz = load_dataset(str(tmp_path / "d.npz"))
    pt = load_dataset(str(tmp_path / "d.pt"))
    csv = load_dataset(str(tmp_path / "d.csv"), split=(0.8, 0.2, 0.0))
    assert (len(npz.train), len(npz.valid), len(npz.test)) == (40, 10, 10)
    assert (len(pt.train), len(pt.valid), len(pt.test)) == (40, 20, 0)
    assert (len(csv.train), len(csv.valid), len(csv.test)) == (48, 12, 0)
    assert npz.kind == pt.kind == csv.kind == "binary"
    assert torch.equal(npz.batch("valid", range(10)), torch.from_numpy(a[40:50]))


def test_builtin_digits_kinds():
    binary, cat, real = (load_dataset("digits", data_type=t) for t in (None, "categorical", "real"))
    assert binary.kind == "binary" and set(binary.batch("train", range(50)).unique().tolist()) <= {0.0, 1.0}
    assert cat.kind == "categorical" and cat.K == 17 and int(cat.batch("train", range(200)).max()) == 16
    x = real.batch("train", range(200))
    assert real.kind == "real" and x.dtype == torch.float32 and 0 < x.min() and x.max() < 1
    assert not torch.equal(x, x.round())  # dequantised


def test_mnist_train_only_idx_file(tmp_path):
    import gzip
    import struct
    n = 20100
    pixels = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    path = tmp_path / "train-images.idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">iiii", 2051, n, 28, 28) + pixels.tobytes())
    d = load_dataset("mnist", str(path), binarize="dynamic")
    assert (len(d.train), len(d.valid), len(d.test)) == (n - 10000, 10000, 0)
    assert d.kind == "binary" and d.dynamic
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(d.batch("train", [0, 5], g1), d.batch("train", [0, 5], g2))


def test_binarize_threshold_turns_reals_into_binary(tmp_path):
    np.save(tmp_path / "r.npy", np.random.default_rng(0).random((50, 8)) * 10)
    d = load_dataset(str(tmp_path / "r.npy"), binarize="5")
    assert d.kind == "binary"
    x = d.batch("train", range(10))
    assert torch.equal(x, (torch.from_numpy(np.asarray(d.train.take(range(10)))) > 5).float())


# ---------------------------------------------------------------------------- bad input, from the CLI
def _bad_files(tmp_path):
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("0,1,0\n1,0\n0,0,1\n")
    nan = tmp_path / "nan.npy"
    a = _binary()
    a[7, 3] = np.nan
    np.save(nan, a)
    labels = tmp_path / "labels.npy"
    np.save(labels, np.random.default_rng(0).integers(0, 9, (60, 6)))
    reals = tmp_path / "reals.npy"
    np.save(reals, np.random.default_rng(0).normal(size=(60, 6)).astype(np.float32))
    empty = tmp_path / "empty.npz"
    np.savez(empty, train=_binary(), valid=_binary()[:0])
    wrong = tmp_path / "data.txt"
    wrong.write_text("0 1\n")
    return {
        "missing": (["--data", str(tmp_path / "nope.npy")], ["--data", "no such file"]),
        "extension": (["--data", str(wrong)], ["--data", "extension", ".npy"]),
        "ragged": (["--data", str(ragged)], ["--data", "rectangular", "same number"]),
        "nan": (["--data", str(nan)], ["--data", "row 7", "NaN"]),
        "labels>=K": (["--data", str(labels), "--model", "categorical-nade", "--K", "4"],
                      ["--K", "[0, K)", "--K 9"]),
        "empty split": (["--data", str(empty)], ["valid split is empty"]),
        "reals to nade": (["--data", str(reals), "--model", "nade"], ["--model nade", "--binarize", "rnade"]),
    }


@pytest.mark.parametrize("case", ["missing", "extension", "ragged", "nan", "labels>=K", "empty split",
                                  "reals to nade"])
def test_bad_data_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    argv, needles = _bad_files(tmp_path)[case]
    out = tmp_path / "run"
    rc = main(["train", *argv, "--hidden", "4", "--epochs", "1", "--out", str(out), "--quiet"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2
    for needle in needles:
        assert needle in line, (needle, line)
    assert not out.exists() or not any(out.iterdir())


def test_data_error_is_a_value_error(tmp_path):
    with pytest.raises(DataError, match="split"):
        np.save(tmp_path / "a.npy", _binary())
        load_dataset(str(tmp_path / "a.npy"), split=(0.5, 0.6, 0.1))
