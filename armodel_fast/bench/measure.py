"""Measuring rows (time and peak memory), the per-row subprocess and the run loop.

See the package docstring (:mod:`armodel_fast.bench`) for the method.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from typing import Optional

import torch

from .core import BenchConfig, Row
from .rows import all_rows, find_row

MEMORY_METHOD = ("peak RSS rise during one call after warm-up (VmHWM reset via /proc/self/clear_refs, "
                 "glibc mmap threshold 64 KiB), fresh subprocess per row; CUDA: max_memory_allocated rise")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
PINNED_MMAP_BYTES = 32 << 20  # the ceiling of glibc's own dynamic mmap threshold (64-bit)
PINNED_TRIM_BYTES = 64 << 20  # twice that, as glibc's dynamic rule sets the trim threshold


def _proc_status_kib(name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise KeyError(name)


def _release_freed_memory() -> bool:
    """glibc only: mmap allocations >= 64 KiB (munmapped when freed), trim the heap at glibc's
    default 128 KiB, and trim it now."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, 65536)) \
        and bool(libc.mallopt(M_TRIM_THRESHOLD, 128 << 10)) and libc.malloc_trim(0) >= 0


def _glibc():
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version, libc.mallopt  # noqa: B018 - AttributeError where the C library is not glibc
        return libc
    except (OSError, AttributeError):
        return None


def pin_allocator() -> bool:
    """glibc only: fix malloc's mmap and trim thresholds (32 and 64 MiB) where its dynamic
    rule would end up, so that no row's time depends on the rows timed before it.

    By default glibc mmaps each allocation over 128 KiB and returns freed memory to the
    OS, raising both thresholds (up to these values) each time it frees a larger mmapped
    block. A row that allocates temporaries of a few MiB per call then either pays page
    faults on every call (1,850 per MADE [500] reference step, 4.9 instead of 3.0 ms on
    the 2-core Intel CPU) or none, depending only on which earlier row freed a larger
    block. Pinned, freed memory under 32 MiB is reused without faults for every provider.
    """
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, PINNED_MMAP_BYTES)) \
        and bool(libc.mallopt(M_TRIM_THRESHOLD, PINNED_TRIM_BYTES))


def allocator_state(cfg: BenchConfig) -> str:
    """What the timed calls' allocator is (for the report); with ``cfg.allocator == "pinned"``
    this pins it here too (the interleaved rows are timed in this process)."""
    if _glibc() is None:
        return "allocator: not glibc, as it is"
    if cfg.allocator == "pinned":
        return "glibc malloc thresholds pinned (mmap 32 MiB, trim 64 MiB)" if pin_allocator() else \
            "glibc malloc thresholds NOT pinned (mallopt refused)"
    return "glibc malloc thresholds as the process has them (dynamic by default; --allocator default)"


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


def synchronized_call(row: Row, cfg: BenchConfig):
    """``row.make(cfg)`` with ``cfg.threads`` and ``cfg.allocator`` applied, followed by a CUDA
    synchronise on a CUDA device: the callable a timer may time (pytest-benchmark times this one)."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.allocator == "pinned":
        pin_allocator()
    fn = row.make(cfg)
    if not cfg.device.startswith("cuda"):
        return fn

    def run():
        fn()
        torch.cuda.synchronize()
    return run


def measure(row: Row, cfg: BenchConfig, memory: bool) -> dict:
    """Time ``row`` here: {"median_ms", "times_ms", "peak_mib"}."""
    fn = synchronized_call(row, cfg)
    if cfg.device.startswith("cuda"):
        torch.cuda.synchronize()
    for _ in range(row.warmup):
        fn()
    times = []
    for _ in range(repeats_of(row, cfg)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    result = {"median_ms": statistics.median(times), "times_ms": times,
              "peak_mib": _peak_memory_mib(fn, cfg.device) if memory else None}
    if row.provider == "auto":
        result["info"] = _auto_ran()
    return result


SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def profile_call(row: Row, cfg: BenchConfig, top: int = 12) -> str:
    """One call of ``row`` under ``torch.profiler`` (CPU, and CUDA on a GPU), after its warm-up
    calls: a line of totals (CPU time over all threads, GPU kernel time, the call's waits for the
    device and its copies) and the ``top`` ops by CPU time. Where a kernel row loses to one
    library call on a GPU, this says whether the host or the kernels spend the time."""
    from torch.profiler import ProfilerActivity, profile

    fn, cuda = row.make(cfg), cfg.device.startswith("cuda")
    for _ in range(max(row.warmup, 1)):
        fn()
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        fn()
        if cuda:  # after the counted events: the harness's own wait is not the call's
            torch.cuda.synchronize()
    events = prof.key_averages()
    count = lambda names: sum(e.count for e in events if e.key.startswith(names))  # noqa: E731
    line = (f"CPU time (all threads) {sum(e.self_cpu_time_total for e in events):.0f} us in "
            f"{sum(e.count for e in events)} events")
    if cuda:
        gpu = [getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", None)) for e in events]
        line += (f"; GPU kernels {sum(gpu):.0f} us" if None not in gpu else "; GPU kernel time: not reported")
        line += f"; waits for the device {max(count(SYNC_EVENTS) - 1, 0)}; copies {count(('cudaMemcpy',))}"
    return line + "\n" + events.table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=48)


def _auto_ran() -> str:
    """What the ``auto`` row ran (the last eager ``auto`` pick) and why, for its note."""
    from .. import dispatch

    pick = dispatch.last_auto_pick()
    if pick is None:
        return "auto: nothing resolved"
    op, backend, why = pick
    return f"auto ran {backend}" + (f": {why}" if why else "")


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
    code = "from armodel_fast.bench.measure import child_main; child_main()"
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
    spec = json.loads((argv or sys.argv[1:])[0])
    cfg = BenchConfig(**spec["cfg"])
    row = find_row(cfg, spec["key"])
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


def measure_interleaved(rows: list, cfg: BenchConfig) -> dict:
    """Time ``rows`` (one op and size) in turns: warm each up, then rounds of one call per
    row until each has its repeats, each round in a new order (shuffled, seeded by
    ``cfg.seed``): in a fixed order a row always follows the same one, and on a small
    machine what the previous call left (its freed memory: reused, or returned to the OS
    and faulted in again) moved a row's time by 20-30% (the ``cpp`` and ``auto`` rows,
    which run the same kernels, differed that much). ``{row.key: result}``: as
    :func:`measure` without peak memory, or ``{"error": ...}`` for a row whose setup or
    call failed."""
    out, fns, infos = {}, {}, {}
    for row in rows:
        try:
            fns[row.key] = synchronized_call(row, cfg)
            for _ in range(row.warmup):
                fns[row.key]()
        except Exception as e:  # noqa: BLE001 - reported as the row's note
            out[row.key] = {"error": short_error(e)}
            fns.pop(row.key, None)
    times = {key: [] for key in fns}
    live = [row for row in rows if row.key in fns]
    order = random.Random(cfg.seed)
    for round_ in range(max((repeats_of(r, cfg) for r in live), default=0)):
        for row in order.sample(live, len(live)):
            if row.key in out or round_ >= repeats_of(row, cfg):
                continue
            try:
                t0 = time.perf_counter()
                fns[row.key]()
                times[row.key].append((time.perf_counter() - t0) * 1e3)
            except Exception as e:  # noqa: BLE001
                out[row.key] = {"error": short_error(e)}
                continue
            if row.provider == "auto":
                infos[row.key] = _auto_ran()
    for row in live:
        if row.key not in out:
            out[row.key] = {"median_ms": statistics.median(times[row.key]), "times_ms": times[row.key],
                            "peak_mib": None, **({"info": infos[row.key]} if row.key in infos else {})}
    return out


def _memory_only(row: Row, cfg: BenchConfig) -> dict:
    """The row's peak memory from its subprocess (one timed call there, not reported)."""
    result = _measure_in_subprocess(row, replace(cfg, repeats=1, interleave=False))
    return {"peak_mib": result["peak_mib"]}


def _run_interleaved(cfg: BenchConfig, rows: list, console) -> list:
    groups: dict = {}
    for row in rows:
        if row.skip is None:
            groups.setdefault((row.op, row.size_label), []).append(row)
    timed = {}
    for (op, label), group in groups.items():
        if console is not None:
            console.print(f"  {op} [{label}]: {len(group)} providers in turns ...")
        timed.update(measure_interleaved(group, cfg))
    results = []
    for row in rows:
        result = _result_of(row)
        got = timed.get(row.key)
        if got is not None and "error" in got:
            result["note"] = "failed: " + got["error"]
        elif got is not None:
            result.update(got)
            if cfg.memory:
                try:
                    result.update(_memory_only(row, cfg))
                except Exception as e:  # noqa: BLE001 - the timing stands; say why memory is missing
                    result["note"] = "peak memory failed: " + short_error(e)
        results.append(result)
    return add_ratios(results)


def run_bench(cfg: BenchConfig, rows=None, console=None) -> list:
    """Measure every row; returns one dict per row (skipped and failed rows have a note).
    ``cfg.interleave``: the providers of each op and size are timed in turns in this
    process (:func:`measure_interleaved`), peak memory still in a subprocess per row."""
    rows = all_rows(cfg) if rows is None else rows
    if cfg.interleave:
        return _run_interleaved(cfg, rows, console)
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
            if cfg.profile and row.kind == "kernel" and result.get("median_ms") is not None:
                try:
                    result["profile"] = profile_call(row, cfg)
                except Exception as e:  # noqa: BLE001 - the timing stands; say why the profile is missing
                    result["profile"] = "profile failed: " + short_error(e)
            if console is not None:  # each figure as it comes: a run cut short keeps its rows
                ms = result.get("median_ms")
                console.print("      -> " + (result.get("note") or (f"{ms:.4g} ms" if ms is not None else "-")))
        results.append(result)
    return add_ratios(results)
