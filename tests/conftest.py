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
