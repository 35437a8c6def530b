"""The command line: train / sample / bench, in-process through ``main([...])``."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import armodel_fast as af
from armodel_fast.cli import main

REPO = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def nade_run(tmp_path_factory):
    """One epoch of a small NADE on digits with the reference backend."""
    out = tmp_path_factory.mktemp("nade")
    rc = main(["train", "--model", "nade", "--data", "digits", "--epochs", "1", "--hidden", "16",
               "--backend", "reference", "--out", str(out), "--quiet"])
    assert rc == 0
    return out


def test_train_writes_the_run_folder(nade_run):
    metrics = json.loads((nade_run / "metrics.json").read_text())
    assert metrics["D"] == 64 and metrics["steps"] == 12  # 1197 rows, batch 100
    assert metrics["valid_nll"] < 64 * math.log(2)  # beats the uniform model after one epoch
    assert metrics["valid_bits_per_dim"] == pytest.approx(metrics["valid_nll"] / (64 * math.log(2)))
    assert metrics["backend_ran"] == "reference"
    for name in ("model.pt", "best.pt", "last.pt", "metrics.jsonl", "learning_curve.png"):
        assert (nade_run / name).is_file(), name
    assert (nade_run / "learning_curve.png").read_bytes()[:8] == PNG_SIGNATURE
    records = [json.loads(line) for line in (nade_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [12] and records[0]["valid_nll"] == pytest.approx(metrics["valid_nll"])


def test_train_prints_backend_and_validation(tmp_path, capsys):
    rc = main(["train", "--model", "fvsbn", "--epochs", "2", "--out", str(tmp_path)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "backend: auto -> " in text and ("backend cpp" in text or "backend reference" in text)
    assert text.count("valid NLL") == 2 and "bits/dim" in text



def test_train_backend_line_applies_the_size_rule(tmp_path, capsys, monkeypatch):
    """The 'backend:' line says what a training step runs, auto's size rule included: a small
    model (digits, D=64) trains on the reference, and the line says why; with the threshold at
    0 the same run announces (and runs) the kernels."""
    from armodel_fast import dispatch

    if not af.backends()["cpp"].available:
        pytest.skip("no cpp backend here")
    args = ["train", "--model", "made", "--hidden", "16", "--max-steps", "2", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "small")]) == 0
    text = capsys.readouterr().out
    assert "backend: auto -> reference (plain PyTorch; auto's size rule" in text and "too small" in text
    assert text.rstrip().splitlines()[-2].endswith("backend reference")
    monkeypatch.setattr(dispatch, "AUTO_MIN_WORK", {"train": 0, "eval": 0, "train_unsorted": 0, "train_unsorted_tiles": 0})
    assert main(args + ["--out", str(tmp_path / "large")]) == 0
    text = capsys.readouterr().out
    assert "backend: auto -> cpp (compiled kernel)" in text and "backend cpp" in text
    monkeypatch.setattr(dispatch, "_pick_auto", lambda *a: "reference")  # as without the kernels
    assert main(args + ["--out", str(tmp_path / "none")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("backend:"))
    assert line.startswith("backend: auto -> reference (plain PyTorch; cpp: ") and "size rule" not in line


def test_sample_writes_png(nade_run, tmp_path, capsys):
    png = tmp_path / "grid.png"
    rc = main(["sample", "--checkpoint", str(nade_run / "model.pt"), "--n", "16", "--out", str(png)])
    assert rc == 0
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert str(png) in capsys.readouterr().out


def test_sample_missing_checkpoint_names_path(tmp_path, capsys):
    missing = tmp_path / "nope" / "model.pt"
    rc = main(["sample", "--checkpoint", str(missing), "--out", str(tmp_path / "x.png")])
    assert rc != 0
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_sample_invalid_checkpoint_names_path(tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_text("not a checkpoint")
    rc = main(["sample", "--checkpoint", str(bad), "--out", str(tmp_path / "x.png")])
    assert rc != 0
    assert str(bad) in capsys.readouterr().err


def test_train_made_then_sample(tmp_path):
    rc = main(["train", "--model", "made", "--num-masks", "2", "--hidden", "32", "32", "--epochs", "1",
               "--backend", "reference", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    rc = main(["sample", "--checkpoint", str(tmp_path / "model.pt"), "--n", "4",
               "--out", str(tmp_path / "made.png")])
    assert rc == 0
    assert (tmp_path / "made.png").read_bytes()[:8] == PNG_SIGNATURE


def test_hidden_list_rejected_for_nade(tmp_path, capsys):
    rc = main(["train", "--model", "nade", "--hidden", "8", "8", "--epochs", "1",
               "--out", str(tmp_path), "--quiet"])
    assert rc != 0
    assert "--hidden" in capsys.readouterr().err


def test_module_help_in_subprocess():
    proc = subprocess.run([sys.executable, "-m", "armodel_fast", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "eval", "sample", "bench"):
        assert command in proc.stdout


TINY_BENCH = ["bench", "--B", "4", "--D", "8", "--H", "4", "--repeats", "1", "--no-compile"]


def test_bench_tiny_in_process(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(TINY_BENCH + ["--no-memory", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "reference loop" in text and "reference cumsum" in text and "median ms" in text
    rows = json.loads(out_json.read_text())["rows"]
    ran = [r for r in rows if r["median_ms"] is not None]
    assert {(r["op"], r["provider"]) for r in ran} >= {
        ("nade log_prob fwd", "reference loop"), ("nade log_prob fwd+bwd", "reference cumsum"),
        ("nade sample", "reference loop")}
    assert all(r["median_ms"] > 0 for r in ran)
    assert all(r["note"] for r in rows if r["median_ms"] is None)  # every skipped row says why
    assert any(r["provider"] == "torch.compile loop" and r["note"] == "--no-compile" for r in rows)


def test_bench_tiny_memory_subprocess(tmp_path, capsys):
    """Default mode: a fresh subprocess per row that also reads the peak memory."""
    out_json = tmp_path / "bench.json"
    assert main(TINY_BENCH + ["--filter", "log_prob fwd reference", "--family", "nade", "--json", str(out_json)]) == 0
    assert "peak MiB" in capsys.readouterr().out
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["provider"] for r in rows] == ["reference loop", "reference cumsum"]
    for r in rows:
        assert r["median_ms"] > 0 and r["note"] is None
        if sys.platform.startswith("linux"):
            assert r["peak_mib"] is not None and r["peak_mib"] >= 0


@pytest.mark.parametrize("model,extra", [("made", ["--num-masks", "8", "--hidden", "48", "48", "--order", "random"]),
                                         ("nade", ["--hidden", "24"])])
def test_fast_backend_trains_to_the_reference_nll(tmp_path, model, extra):
    """Same seed, same data: the cpp backend's training run matches the reference's NLLs."""
    if not af.backends()["cpp"].available:
        pytest.fail(f"cpp backend unavailable: {af.backends()['cpp'].reason}")
    runs = {}
    for backend in ("reference", "cpp"):
        out = tmp_path / backend
        rc = main(["train", "--model", model, *extra, "--epochs", "2", "--backend", backend, "--seed", "3",
                   "--out", str(out), "--quiet"])
        assert rc == 0
        runs[backend] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for ref, cpp in zip(runs["reference"], runs["cpp"], strict=True):
        for key in ("train_nll", "valid_nll"):
            assert cpp[key] == pytest.approx(ref[key], rel=2e-3), key


def test_bad_output_paths_fail_before_any_work(nade_run, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    rc = main(["train", "--model", "fvsbn", "--epochs", "1", "--out", str(blocker), "--quiet"])
    err = capsys.readouterr()
    assert rc == 2 and "--out: cannot create directory" in err.err
    assert "train fvsbn" not in err.out  # nothing trained
    rc = main(["sample", "--checkpoint", str(nade_run / "model.pt"), "--out", str(tmp_path)])
    assert rc == 2 and "is a directory" in capsys.readouterr().err


def test_non_numeric_option_names_the_value(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--model", "nade", "--epochs", "abc"])
    assert "--epochs: must be a positive integer, got 'abc'" in capsys.readouterr().err
