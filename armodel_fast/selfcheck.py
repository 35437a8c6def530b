"""Check a build: the compiled extensions load, and an argument error raised in C++
reaches Python as an exception instead of killing the process.

    python -m armodel_fast.selfcheck      # exit 0: fine; 1: a check failed; a crash: signal

benchmarks/gpu_check.sh runs it (its ``smoke`` step) in a process of its own right after
a build. On the first GPU run (H100, torch 2.11.0+cu130, extensions built by that
machine's /opt/gcc g++) every C++ argument error of ``armodel_fast._C`` ended in a
segmentation fault, which took pytest-xdist workers down one after another; this check
finds that in a second, and gpu_check.sh then prints a native backtrace and tries
another compiler.
"""
import sys

import torch

from . import _ext


def expect_error(what: str, call) -> bool:
    """Call ``call``; it must raise a ValueError, TypeError or RuntimeError (the point: it returns)."""
    try:
        call()
    except (ValueError, TypeError, RuntimeError) as e:
        print(f"ok: {what} raised {type(e).__name__}: {str(e).splitlines()[0][:100]}")
        return True
    print(f"FAILED: {what} returned without raising")
    return False


def main() -> int:
    ok = True
    cpu = _ext.get_ext()
    if cpu is None:
        print(f"FAILED: armodel_fast._C did not load: {_ext.ext_error()}")
        return 1
    print("_C:", dict(cpu.build_info()))
    ok &= expect_error("_C.check_order(repeated value)",
                       lambda: cpu.check_order(torch.tensor([0, 0]), 2))
    if torch.cuda.is_available():
        cuda = _ext.get_cuda_ext()
        if cuda is None:
            print(f"FAILED: armodel_fast._C_cuda did not load: {_ext.cuda_ext_error()}")
            return 1
        x = torch.zeros(2, 3, device="cuda")
        ok &= expect_error("_C_cuda.nade_forward(unknown kind)",
                           lambda: cuda.nade_forward(99, x, x, x, x, x, torch.arange(3)))
    else:
        print("no CUDA GPU: _C_cuda not checked")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
