"""Configuration, rows, measuring (time and peak memory) and the run loop.

See the package docstring (:mod:`armodel_fast.bench`) for the method.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch

COMPILE_AUTO_MAX_D = 32  # torch.compile unrolls a D-step loop: minutes beyond small D
MEMORY_METHOD = ("peak RSS rise during one call after warm-up (VmHWM reset via /proc/self/clear_refs, "
                 "glibc mmap threshold 64 KiB), fresh subprocess per row; CUDA: max_memory_allocated rise")
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
KINDS = ("reference", "baseline", "compiled", "kernel")


@dataclass
class BenchConfig:
    """What to run. ``B``/``D``/``H`` of None use each op's own sizes (headline, or
    the sweep with ``sweep``, or tiny ones with ``quick``); a value given replaces
    that dimension in every size of every op (``H``: MADE's hidden sizes [H, H])."""
    B: Optional[int] = None
    D: Optional[int] = None
    H: Optional[int] = None
    repeats: int = 5
    device: Optional[str] = None  # None: cuda if available, else cpu
    seed: int = 0
    threads: Optional[int] = None  # torch.set_num_threads in each row (None: torch's default)
    compile: str = "auto"  # "auto" (loops only when D <= COMPILE_AUTO_MAX_D), "on", "off"
    memory: bool = True    # subprocess per row with a peak-memory reading
    filter: Optional[str] = None
    sweep: bool = False
    quick: bool = False
    families: tuple = ()  # op families to run (keys of rows.ROW_BUILDERS); empty: all

    def __post_init__(self):
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.compile not in ("auto", "on", "off"):
            raise ValueError(f"compile must be 'auto', 'on' or 'off', got {self.compile!r}")


@dataclass
class Row:
    """One provider of one op at one size. ``make(cfg)`` builds the inputs and returns
    the zero-argument callable to time; ``skip`` is why the row is not run instead.

    ``kind``: ``reference`` (an eager reference form: the ratio's baseline is the
    fastest of them for the same op and size), ``baseline`` (shown for scale, e.g.
    an unmasked layer, but not a ratio reference), ``compiled`` or ``kernel``.
    """
    op: str
    provider: str
    make: Optional[Callable] = None
    skip: Optional[str] = None
    kind: str = "reference"
    size: dict = field(default_factory=dict)
    size_label: str = ""
    warmup: int = 1
    repeats: Optional[int] = None  # at most this many timed calls (slow rows); None: cfg.repeats
    info: Optional[str] = None     # a remark printed with the result (how the row was run)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def reference(self) -> bool:
        return self.kind == "reference"

    @property
    def key(self) -> str:
        return f"{self.op} [{self.size_label}] | {self.provider}"

    def matches(self, text: Optional[str]) -> bool:
        """``--filter``: the text occurs in ``"op provider"``."""
        return not text or text in f"{self.op} {self.provider}"


# ---------------------------------------------------------------------------- measuring
def _proc_status_kib(name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise KeyError(name)


def _release_freed_memory() -> bool:
    """glibc only: mmap allocations >= 64 KiB (munmapped when freed) and trim the heap."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 65536)) and libc.malloc_trim(0) >= 0
    except (OSError, AttributeError):
        return False


def _peak_memory_mib(fn, device: str) -> Optional[float]:
    """Extra memory one call of ``fn`` needs (see the package docstring), or None."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    if not _release_freed_memory():
        return None
    fn()  # once more, so that the new allocator setting is warmed up too
    gc.collect()
    _release_freed_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = _proc_status_kib("VmRSS")
        fn()
        return max(0, _proc_status_kib("VmHWM") - before) / 1024
    except OSError:  # not Linux, or /proc not writable
        return None


def repeats_of(row: Row, cfg: BenchConfig) -> int:
    return cfg.repeats if row.repeats is None else min(cfg.repeats, row.repeats)


def measure(row: Row, cfg: BenchConfig, memory: bool) -> dict:
    """Time ``row`` here: {"median_ms", "times_ms", "peak_mib"}."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    fn = row.make(cfg)
    sync = torch.cuda.synchronize if cfg.device.startswith("cuda") else (lambda: None)
    for _ in range(row.warmup):
        fn()
    times = []
    for _ in range(repeats_of(row, cfg)):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "times_ms": times,
            "peak_mib": _peak_memory_mib(fn, cfg.device) if memory else None}


def short_error(e: BaseException, limit: int = 240) -> str:
    """``Type: first line of the message``, cut to ``limit`` characters (pybind errors
    otherwise print every argument tensor)."""
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _measure_in_subprocess(row: Row, cfg: BenchConfig) -> dict:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this very package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    spec = json.dumps({"cfg": asdict(cfg), "key": row.key})
    code = "from armodel_fast.bench import child_main; child_main()"
    proc = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit status {proc.returncode}"]
        raise RuntimeError(f"subprocess exit status {proc.returncode}: {lines[-1][:200]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def child_main(argv=None) -> None:
    """Entry point of the per-row subprocess: measure one row, print JSON."""
    from .rows import all_rows

    spec = json.loads((argv or sys.argv[1:])[0])
    cfg = BenchConfig(**spec["cfg"])
    row = next(r for r in all_rows(cfg) if r.key == spec["key"])
    try:
        result = measure(row, cfg, memory=True)
    except Exception as e:  # noqa: BLE001 - reported by the parent as the row's note
        result = {"error": short_error(e)}
    print(json.dumps(result))


def _result_of(row: Row) -> dict:
    return {"op": row.op, "size": row.size, "size_label": row.size_label, "provider": row.provider,
            "kind": row.kind, "reference": row.reference, "baseline": row.kind == "baseline",
            "median_ms": None, "times_ms": [], "peak_mib": None, "note": row.skip, "info": row.info}


def add_ratios(results: list) -> list:
    """``speedup_vs_best_reference``: fastest eager reference time of the same op and
    size over this row's time (None where either is missing)."""
    best = {}
    for r in results:
        if r["reference"] and r["median_ms"] is not None:
            group = (r["op"], r["size_label"])
            best[group] = min(best.get(group, float("inf")), r["median_ms"])
    for r in results:
        group = (r["op"], r["size_label"])
        ok = r["median_ms"] is not None and group in best
        r["speedup_vs_best_reference"] = best[group] / r["median_ms"] if ok else None
    return results


def run_bench(cfg: BenchConfig, rows=None, console=None) -> list:
    """Measure every row; returns one dict per row (skipped and failed rows have a note)."""
    from .rows import all_rows

    rows = all_rows(cfg) if rows is None else rows
    results = []
    for i, row in enumerate(rows):
        result = _result_of(row)
        if row.skip is None:
            if console is not None:
                console.print(f"  [{i + 1}/{len(rows)}] {row.op} [{row.size_label}] {row.provider} ...")
            try:
                result.update(_measure_in_subprocess(row, cfg) if cfg.memory
                              else measure(row, cfg, memory=False))
            except Exception as e:  # noqa: BLE001 - a failing row is reported, not fatal
                result["note"] = "failed: " + (str(e) if cfg.memory else short_error(e))
        results.append(result)
    return add_ratios(results)
