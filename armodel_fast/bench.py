"""Benchmarks behind ``python -m armodel_fast bench``.

Rows are data: a :class:`Row` is ``(op, provider, make)`` where ``make(cfg)``
sets up inputs and returns the zero-argument callable to time, or a ``skip``
reason instead. ``ROW_BUILDERS`` lists functions ``cfg -> [Row, ...]``; to add
rows (say for MADE) write such a function and append it. Rows with
``reference=True`` are the eager reference forms; every row's ratio is taken
against the fastest of them for the same op.

Time: median of ``repeats`` calls after warm-up (one call; two for
torch.compile rows, whose first call compiles), with CUDA synchronised.

Peak memory (MEMORY_METHOD): each row runs in a fresh subprocess. On CPU it is
the rise of the process's resident-set high-water mark during one call, after
warm-up: VmHWM is reset through ``/proc/self/clear_refs`` and compared with
VmRSS just before the call. Before that reading (and after the timing, which
runs with the default allocator) glibc is told, through ``mallopt``, to mmap
every allocation of 64 KiB or more and its free heap is trimmed, so freed
tensors leave the RSS and are not silently reused. It counts
everything the call touches (outputs, tensors saved for backward, gradients,
workspaces), not inputs or parameters that exist before it. tracemalloc cannot
be used: it does not see torch's CPU allocations. On CUDA it is
``torch.cuda.max_memory_allocated`` minus the allocation before the call.
"""
from __future__ import annotations

import ctypes
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

COMPILE_AUTO_MAX_D = 32  # torch.compile unrolls the D-step loop: minutes beyond small D
MEMORY_METHOD = ("peak RSS rise during one call after warm-up (VmHWM reset via /proc/self/clear_refs, "
                 "glibc mmap threshold 64 KiB), fresh subprocess per row; CUDA: max_memory_allocated rise")
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


@dataclass
class BenchConfig:
    B: int = 256
    D: int = 784
    H: int = 500
    repeats: int = 5
    device: Optional[str] = None  # None: cuda if available, else cpu
    seed: int = 0
    threads: Optional[int] = None  # torch.set_num_threads in each row (None: torch's default)
    compile: str = "auto"  # "auto" (only when D <= COMPILE_AUTO_MAX_D), "on", "off"
    memory: bool = True    # subprocess per row with a peak-memory reading
    filter: Optional[str] = None

    def __post_init__(self):
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Row:
    op: str
    provider: str
    make: Optional[Callable] = None  # cfg -> zero-argument callable to time
    skip: Optional[str] = None       # reason the row is not run
    reference: bool = False          # an eager reference form (the baseline of the ratio)
    warmup: int = 1

    @property
    def key(self) -> str:
        return f"{self.op} | {self.provider}"


# ---------------------------------------------------------------------------- NADE rows
def _nade_setup(cfg: BenchConfig, backend: str = "reference"):
    """A NADE module (parameters from ``cfg.seed``), x [B, D] in {0, 1} and u [B, D]."""
    from .nn import NADE

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = NADE(cfg.D, cfg.H).to(cfg.device)
        x = torch.bernoulli(torch.full((cfg.B, cfg.D), 0.5)).to(cfg.device)
        u = torch.rand(cfg.B, cfg.D).to(cfg.device)
    if backend != "reference":
        model.set_backend(backend)
    return model, x, u


def _forward(fn):
    def run():
        with torch.no_grad():
            return fn()
    return run


def _forward_backward(fn, model):
    def run():
        fn().sum().backward()
        model.zero_grad(set_to_none=True)
    return run


def _nade_log_prob_maker(form: str, grad: bool, compiled: bool = False):
    def make(cfg):
        from .reference.nade import nade_log_prob
        model, x, _ = _nade_setup(cfg)
        f = functools.partial(nade_log_prob, form=form)
        if compiled:
            f = torch.compile(f)
        fn = lambda: f(x, *model.params())  # noqa: E731
        return _forward_backward(fn, model) if grad else _forward(fn)
    return make


def _nade_kernel_maker(backend: str, what: str):
    def make(cfg):
        model, x, u = _nade_setup(cfg, backend)
        if what == "sample":
            return _forward(lambda: model.sample(cfg.B, u=u))
        fn = lambda: model.log_prob(x)  # noqa: E731
        return _forward_backward(fn, model) if what == "fwd+bwd" else _forward(fn)
    return make


def _nade_ref_sample(cfg):
    from .reference.nade import nade_sample
    model, _, u = _nade_setup(cfg)
    return _forward(lambda: nade_sample(*model.params(), u))


def kernel_skip_reasons(op: str, device) -> dict:
    """``{backend: None or why it cannot run op}`` for the non-reference backends,
    read from :func:`armodel_fast.explain` (lines ``name: yes`` / ``name: no - why``)."""
    from ._backend import explain
    reasons = {}
    for line in explain(op, device).splitlines():
        name, _, verdict = line.partition(": ")
        if name != "reference":
            reasons[name] = None if verdict == "yes" else verdict.removeprefix("no - ")
    return reasons


def nade_rows(cfg: BenchConfig) -> list:
    if cfg.compile == "off":
        compile_skip = "--no-compile"
    elif cfg.compile == "auto" and cfg.D > COMPILE_AUTO_MAX_D:
        compile_skip = (f"compiling the {cfg.D}-step loop takes minutes; quick mode compiles only "
                        f"at D <= {COMPILE_AUTO_MAX_D} (pass --compile)")
    else:
        compile_skip = None
    kernels = kernel_skip_reasons("nade", cfg.device)
    rows = []
    for what, grad in (("fwd", False), ("fwd+bwd", True)):
        op = f"nade log_prob {what}"
        rows += [Row(op, "reference loop", _nade_log_prob_maker("loop", grad), reference=True),
                 Row(op, "reference cumsum", _nade_log_prob_maker("cumsum", grad), reference=True),
                 Row(op, "torch.compile loop", _nade_log_prob_maker("loop", grad, compiled=True),
                     skip=compile_skip, warmup=2)]
        rows += [Row(op, name, _nade_kernel_maker(name, what), skip=why) for name, why in kernels.items()]
    rows.append(Row("nade sample", "reference loop", _nade_ref_sample, reference=True))
    rows += [Row("nade sample", name, _nade_kernel_maker(name, "sample"), skip=why)
             for name, why in kernels.items()]
    return rows


ROW_BUILDERS = [nade_rows]


def all_rows(cfg: BenchConfig) -> list:
    rows = [row for build in ROW_BUILDERS for row in build(cfg)]
    if cfg.filter:
        rows = [row for row in rows if cfg.filter in f"{row.op} {row.provider}"]
    return rows


# ---------------------------------------------------------------------------- measuring
def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _release_freed_memory() -> bool:
    """glibc only: mmap allocations >= 64 KiB (munmapped when freed) and trim the heap."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 65536)) and libc.malloc_trim(0) >= 0
    except (OSError, AttributeError):
        return False


def _peak_memory_mib(fn, device: str) -> Optional[float]:
    """Extra memory one call of ``fn`` needs (see the module docstring), or None."""
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


def measure(row: Row, cfg: BenchConfig, memory: bool) -> dict:
    """Time ``row`` here: {"median_ms", "times_ms", "peak_mib"}."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    fn = row.make(cfg)
    sync = torch.cuda.synchronize if cfg.device.startswith("cuda") else (lambda: None)
    for _ in range(row.warmup):
        fn()
    times = []
    for _ in range(cfg.repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "times_ms": times,
            "peak_mib": _peak_memory_mib(fn, cfg.device) if memory else None}


def _measure_in_subprocess(row: Row, cfg: BenchConfig) -> dict:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # import this very package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    spec = json.dumps({"cfg": asdict(cfg), "key": row.key})
    code = "from armodel_fast.bench import child_main; child_main()"
    proc = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit status {proc.returncode}"]
        raise RuntimeError(lines[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_main(argv=None) -> None:
    """Entry point of the per-row subprocess: measure one row, print JSON."""
    spec = json.loads((argv or sys.argv[1:])[0])
    cfg = BenchConfig(**spec["cfg"])
    row = next(r for r in all_rows(cfg) if r.key == spec["key"])
    print(json.dumps(measure(row, cfg, memory=True)))


def run_bench(cfg: BenchConfig, rows=None, console=None) -> list:
    """Measure every row; returns one dict per row (skipped and failed rows have a note)."""
    rows = all_rows(cfg) if rows is None else rows
    results = []
    for row in rows:
        result = {"op": row.op, "provider": row.provider, "reference": row.reference,
                  "median_ms": None, "times_ms": [], "peak_mib": None, "note": row.skip}
        if row.skip is None:
            if console is not None:
                console.print(f"  {row.op:24s} {row.provider} ...")
            try:
                result.update(_measure_in_subprocess(row, cfg) if cfg.memory
                              else measure(row, cfg, memory=False))
            except Exception as e:  # noqa: BLE001 - a failing row is reported, not fatal
                result["note"] = f"failed: {e}"
        results.append(result)
    best = {}
    for r in results:
        if r["reference"] and r["median_ms"] is not None:
            best[r["op"]] = min(best.get(r["op"], float("inf")), r["median_ms"])
    for r in results:
        ok = r["median_ms"] is not None and r["op"] in best
        r["speedup_vs_best_reference"] = best[r["op"]] / r["median_ms"] if ok else None
    return results


def print_table(results: list, cfg: BenchConfig, console) -> None:
    from rich.table import Table

    table = Table(title=f"NADE B={cfg.B} D={cfg.D} H={cfg.H} on {cfg.device}, median of "
                        f"{cfg.repeats}, torch {torch.__version__}, {cfg.threads or torch.get_num_threads()} threads")
    for name, justify in (("op", "left"), ("provider", "left"), ("median ms", "right"),
                          ("vs best ref", "right"), ("peak MiB", "right"), ("note", "left")):
        table.add_column(name, justify=justify, overflow="fold", no_wrap=name != "note")
    for r in results:
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        table.add_row(r["op"], r["provider"], fmt(r["median_ms"], ".3f"),
                      "-" if r["speedup_vs_best_reference"] is None
                      else f"{r['speedup_vs_best_reference']:.2f}x",
                      fmt(r["peak_mib"], ".1f"), r["note"] or "")
    console.print(table)
    console.print("vs best ref: time of the fastest eager reference form / this row's time (>1 = faster).")
    console.print("peak MiB: " + (MEMORY_METHOD if cfg.memory else "not measured (--no-memory)"))


def write_json(path, results: list, cfg: BenchConfig) -> None:
    with open(path, "w") as f:
        json.dump({"config": asdict(cfg), "torch": torch.__version__,
                   "threads": cfg.threads or torch.get_num_threads(),
                   "memory_method": MEMORY_METHOD if cfg.memory else None, "rows": results}, f, indent=2)
