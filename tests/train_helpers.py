"""Shared helpers of the tests/test_train_*.py files."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from armodel_fast.training import checkpoint as ckpt

REPO = Path(__file__).resolve().parent.parent
# Where subprocesses start: `python -m` puts that folder first on sys.path, so with the installed
# package under test it must not be the checkout (whose in-tree extension may be another torch's).
RUN_DIR = Path(tempfile.gettempdir()) if os.environ.get("ARMODEL_FAST_EXPECT_INSTALLED") else REPO


def env() -> dict:
    """Subprocess environment: this checkout first on the path (unless the installed package is
    under test), one thread (bitwise runs)."""
    path = os.environ.get("PYTHONPATH", "")
    if not os.environ.get("ARMODEL_FAST_EXPECT_INSTALLED"):
        path = str(REPO) + os.pathsep + path
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def cli(*args, check=True, timeout=300, prefix=("-m", "armodel_fast")):
    proc = subprocess.run([sys.executable, *prefix, *map(str, args)], cwd=RUN_DIR, env=env(),
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def params(run_dir, name="model.pt") -> dict:
    return ckpt.load(Path(run_dir) / name)["state_dict"]


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]
