"""Test-session setup. Runs before any test module imports the package.

Triton kernels need a GPU; without one they run under the Triton interpreter,
which must be switched on before triton is imported, so it is set here.
"""

import os
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_CACHE_DIR", str(REPO / ".cache" / "triton"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))

# The one tolerance table (dtype -> atol/rtol) of the op tests. Low precision: the kernels
# compute in fp32 from the exactly upcast inputs and round once at the end, so their error
# against the fp64 reference stays within twice the dtype's unit roundoff (2 x 2^-11 for
# fp16, 2 x 2^-8 for bf16). Sums of D terms (log p) scale atol by D, gradients by their
# largest reference entry.
TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}


def tolerance(dtype, scale: float = 1.0) -> dict:
    """``assert_close`` keywords for results in ``dtype``, atol scaled by ``scale``."""
    t = TOLERANCES[dtype]
    return dict(atol=t["atol"] * max(scale, 1.0), rtol=t["rtol"])


def pytest_runtest_logreport(report):
    """``ARMODEL_FAST_FAILURE_LOG=path``: append each failure (test id, phase, traceback) to
    that file as it happens, so a run cut short (a device lease running out) still says what
    failed; gpu_check.sh sets it. Under pytest-xdist only the controller writes (it also
    receives the 'worker crashed' reports)."""
    path = os.environ.get("ARMODEL_FAST_FAILURE_LOG")
    if not path or not report.failed or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    with open(path, "a") as f:
        f.write(f"=== {report.nodeid} [{report.when}]\n{report.longreprtext[-4000:]}\n\n")
