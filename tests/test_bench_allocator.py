"""The bench's allocator setting: glibc's malloc thresholds pinned before timing, so that a
row's time does not depend on which rows ran before it in the same process."""
import ctypes
import json
import subprocess
import sys

import pytest

from armodel_fast import bench
from armodel_fast.cli import main

try:
    ctypes.CDLL(None).mallinfo2  # noqa: B018 - glibc 2.33 or later
    GLIBC = sys.platform.startswith("linux")
except (OSError, AttributeError):
    GLIBC = False
needs_glibc = pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are glibc's (mallinfo2: 2.33 or later)")

# In a fresh process with the given allocator setting: how a 20 MiB tensor is allocated
# (glibc mmaps it by default: its dynamic mmap threshold starts at 128 KiB) and the page
# faults per call of a row that allocates and frees three 4 MiB tensors per call, as the
# reference MADE step does with W * M and its gradients (median of 20 calls).
PROBE = """
import ctypes, resource, statistics, sys, torch
from armodel_fast.bench import BenchConfig, Row, synchronized_call

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                       "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
cfg = BenchConfig(device="cpu", allocator=sys.argv[1])
def make(cfg):
    def call():
        a = torch.ones(1 << 20); b = a + 1; c = b * 2
        return float(c[0])
    return call
fn = synchronized_call(Row("toy", "p", make), cfg)
before = libc.mallinfo2().hblkhd
big = torch.empty(5 << 20)
mmapped = libc.mallinfo2().hblkhd - before
del big
for _ in range(3):
    fn()
faults = []
for _ in range(20):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
print(mmapped >> 20, statistics.median(faults))
"""


def _probe(allocator: str) -> tuple:
    out = subprocess.run([sys.executable, "-c", PROBE, allocator], capture_output=True, text=True, check=True)
    mmapped_mib, faults = out.stdout.strip().splitlines()[-1].split()
    return int(mmapped_mib), float(faults)


@needs_glibc
def test_pinned_allocator_keeps_freed_memory_for_reuse():
    assert _probe("default")[0] >= 20  # glibc's own rule: a fresh process mmaps a 20 MiB block
    mmapped_mib, faults = _probe("pinned")
    assert mmapped_mib == 0  # pinned: from the heap, reused once freed
    assert faults == 0  # ... so a row that frees and reallocates MiBs pays no page faults per call


def test_report_says_which_allocator_timed_the_rows(tmp_path):
    for allocator, words in (("pinned", "glibc malloc thresholds pinned"), ("default", "as the process has them")):
        cfg = bench.BenchConfig(device="cpu", allocator=allocator)
        info = bench.machine_info(cfg)
        assert words in info["allocator"] and words in bench.machine_line(info, cfg)
    out = tmp_path / "b.json"
    assert main(["bench", "--quick", "--no-memory", "--no-compile", "--repeats", "1", "--family", "masked_linear",
                 "--filter", "cpp", "--allocator", "default", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["config"]["allocator"] == "default" and "dynamic" in data["machine"]["allocator"]


def test_bad_allocator_is_refused(capsys):
    with pytest.raises(ValueError, match="allocator"):
        bench.BenchConfig(allocator="jemalloc")
    with pytest.raises(SystemExit) as e:
        main(["bench", "--allocator", "jemalloc"])
    assert e.value.code == 2 and "--allocator" in capsys.readouterr().err
