"""benchmarks/gpu_check.sh: argument handling and its CPU-only path (the GPU path runs on a GPU)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def run(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_options():
    r = run("--help")
    assert r.returncode == 0
    for opt in ("--out", "--skip-build", "--quick", "--dry-run"):
        assert opt in r.stdout


def test_bad_argument_exits_2():
    r = run("--frobnicate")
    assert r.returncode == 2 and "unknown argument" in r.stderr
    assert run("--out").returncode == 2


def test_dry_run_lists_every_step(tmp_path):
    r = run("--dry-run", "--python", sys.executable, "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    for step in ("[build]", "[tests-gpu]", "[tests-all]", "[bench]", "-m gpu", "--plot"):
        assert step in r.stdout
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU path needs a machine without a CUDA GPU")
def test_without_a_gpu_it_says_so_and_exits_3(tmp_path):
    r = run("--python", sys.executable, "--out", str(tmp_path / "o"))
    assert r.returncode == 3
    assert "no CUDA GPU" in r.stderr
