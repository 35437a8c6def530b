"""Reports of a bench run: rich tables, JSON, a markdown table and a PNG of speedups.

Every writer takes the result dicts of :func:`armodel_fast.bench.run_bench`, the
:class:`BenchConfig` and the :func:`machine_info` dict.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import textwrap
from dataclasses import asdict
from pathlib import Path

import torch

from .._files import atomic_write_text, save_figure
from .core import BenchConfig
from .measure import MEMORY_METHOD, allocator_state

RATIO_NOTE = ("vs best ref: time of the fastest eager reference form of the op at that size / this row's time "
              "(>1 = faster)")


def _git(*args) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info(cfg: BenchConfig) -> dict:
    """Where and when the numbers were taken (call it when the run starts)."""
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = None
    if commit is not None:
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = bool(status) if status is not None else None
    gpu = torch.cuda.get_device_name() if cfg.device.startswith("cuda") and torch.cuda.is_available() else None
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": _cpu_model(), "gpu": gpu, "cores": os.cpu_count(), "device": cfg.device,
            "threads": cfg.threads or torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.version.cuda if gpu else None, "python": platform.python_version(),
            "platform": platform.platform(), "commit": commit, "dirty": dirty,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "loadavg_start": load, "allocator": allocator_state(cfg)}


def machine_line(info: dict, cfg: BenchConfig) -> str:
    where = f"{info['gpu']} (CUDA {info['cuda']}), host CPU {info['cpu']}" if info.get("gpu") else info["cpu"]
    commit = "commit unknown" if not info.get("commit") else \
        f"commit {info['commit']}" + (" + uncommitted changes" if info.get("dirty") else "")
    load = ""
    if info.get("loadavg_start"):
        load = f"; load average {info['loadavg_start'][0]}"
        if info.get("loadavg_end"):
            load += f" at start, {info['loadavg_end'][0]} at end"
    busy = ""
    start = (info.get("loadavg_start") or [0.0])[0]  # the end value includes this run's own threads
    if info.get("cores") and start >= info["cores"]:
        busy = (f". WARNING: load average {start} >= {info['cores']} cores at the start: other processes competed for "
                "the CPU, timings are unreliable (multi-threaded rows suffer most; compare with --threads 1)")
    return (f"{where}, {info['cores']} cores, {info['threads']} torch threads, torch {info['torch']}, {commit}, "
            f"{info['date']}; device {cfg.device}, median of up to {cfg.repeats} calls after warm-up"
            f"{', the providers of each op and size timed in turns' if cfg.interleave else ''}"
            f"{'; ' + info['allocator'] if info.get('allocator') else ''}{load}{busy}")


def _groups(results: list) -> list:
    """``[((op, size_label), [rows...]), ...]`` in first-seen order."""
    groups = {}
    for r in results:
        groups.setdefault((r["op"], r["size_label"]), []).append(r)
    return list(groups.items())


def _fmt(v, spec) -> str:
    return "-" if v is None else format(v, spec)


def _ratio(r) -> str:
    v = r["speedup_vs_best_reference"]
    return "-" if v is None else f"{v:.2f}x"


def _provider(r) -> str:
    return r["provider"] + {"reference": " (ref)", "baseline": " (baseline)"}.get(r["kind"], "")


def _remark(r) -> str:
    return "; ".join(t for t in (r["note"], r.get("info") if r["median_ms"] is not None else None) if t)


def print_tables(results: list, cfg: BenchConfig, console, info: dict = None) -> None:
    """One rich table per op and size."""
    from rich.table import Table

    info = info or machine_info(cfg)
    console.print(machine_line(info, cfg))
    for (op, label), rows in _groups(results):
        table = Table(title=f"{op}  {label}  ({cfg.device})", title_justify="left")
        for name, justify in (("provider", "left"), ("median ms", "right"), ("vs best ref", "right"),
                              ("peak MiB", "right"), ("note", "left")):
            table.add_column(name, justify=justify, overflow="fold", no_wrap=name != "note")
        for r in rows:
            table.add_row(_provider(r), _fmt(r["median_ms"], ".3f"), _ratio(r), _fmt(r["peak_mib"], ".1f"),
                          _remark(r))
        console.print(table)
    console.print(RATIO_NOTE + "; (ref): an eager reference form, (baseline): for scale, not a ratio reference.")
    console.print("peak MiB: " + (MEMORY_METHOD if cfg.memory else "not measured (--no-memory)"))


def write_json(path, results: list, cfg: BenchConfig, info: dict = None) -> None:
    info = info or machine_info(cfg)
    atomic_write_text(path, json.dumps(
        {"machine": info, "config": asdict(cfg), "torch": torch.__version__, "threads": info["threads"],
         "memory_method": MEMORY_METHOD if cfg.memory else None, "ratio": RATIO_NOTE,
         "rows": [{k: v for k, v in r.items() if k != "profile"} for r in results]}, indent=2))


def profiles_text(results: list) -> str:
    """The ``--profile`` tables of the rows that have one, each under its op, size and provider."""
    text = "\n".join(f"## {r['op']} [{r['size_label']}] {r['provider']}\n{r['profile']}\n"
                     for r in results if r.get("profile"))
    return text or "no kernel row was profiled (none selected, or none measured)\n"


def _md(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def markdown_table(results: list, cfg: BenchConfig, info: dict) -> str:
    lines = [f"Measured with `armodel-fast bench`: {_md(machine_line(info, cfg))}.", "",
             "| op | size | provider | median ms | vs best ref | peak MiB | note |",
             "|---|---|---|---:|---:|---:|---|"]
    for (op, label), rows in _groups(results):
        for i, r in enumerate(rows):
            first = i == 0
            lines.append("| " + " | ".join([
                _md(op) if first else "", _md(label) if first else "", _md(_provider(r)),
                _fmt(r["median_ms"], ".3f"), _ratio(r), _fmt(r["peak_mib"], ".1f"), _md(_remark(r))]) + " |")
    lines += ["", _md(RATIO_NOTE) + ". (ref): an eager reference form; (baseline): shown for scale, "
              "not a ratio reference.",
              "Peak MiB: " + _md(MEMORY_METHOD if cfg.memory else "not measured (--no-memory)") + ".", ""]
    return "\n".join(lines)


def write_markdown(path, results: list, cfg: BenchConfig, info: dict = None) -> None:
    atomic_write_text(path, markdown_table(results, cfg, info or machine_info(cfg)))


def write_plot(path, results: list, cfg: BenchConfig, info: dict = None) -> None:
    """For each op a panel of bars: speedup vs the best eager reference per provider
    (groups: sizes), log scale; providers that ran at no size are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    info = info or machine_info(cfg)
    ops = list(dict.fromkeys(r["op"] for r in results))
    ran = [r for r in results if r["speedup_vs_best_reference"]]
    colors = {p: f"C{i % 10}" for i, p in enumerate(dict.fromkeys(r["provider"] for r in ran))}
    width = 7.5
    for op in ops:
        n_prov = len({r["provider"] for r in ran if r["op"] == op})
        n_size = len({r["size_label"] for r in results if r["op"] == op})
        width = max(width, 3.5 + 0.3 * max(1, n_prov) * n_size)
    fig = Figure(figsize=(min(width, 24), 2.6 * max(1, len(ops)) + 0.5), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(f"armodel-fast bench: {info.get('gpu') or info['cpu']} ({cfg.device}), torch {info['torch']}, "
                 f"commit {info.get('commit') or '?'}, {info['date']}", fontsize=8)
    axes = fig.subplots(max(1, len(ops)), 1, squeeze=False)[:, 0]
    for ax, op in zip(axes, ops):
        labels = list(dict.fromkeys(r["size_label"] for r in results if r["op"] == op))
        providers = list(dict.fromkeys(r["provider"] for r in ran if r["op"] == op))
        kinds = {r["provider"]: r["kind"] for r in ran if r["op"] == op}
        value = {(r["provider"], r["size_label"]): r["speedup_vs_best_reference"] for r in ran if r["op"] == op}
        bar_w = 0.8 / max(1, len(providers))
        for j, prov in enumerate(providers):
            pts = [(i + (j - (len(providers) - 1) / 2) * bar_w, value[prov, lab])
                   for i, lab in enumerate(labels) if (prov, lab) in value]
            bars = ax.bar([p[0] for p in pts], [p[1] for p in pts], bar_w, color=colors[prov],
                          hatch="//" if kinds[prov] == "baseline" else None, edgecolor="white", linewidth=0.5,
                          label=prov + (" (baseline)" if kinds[prov] == "baseline" else ""))
            ax.bar_label(bars, labels=[f"{p[1]:.3g}x" for p in pts], fontsize=6, padding=1)
        vals = list(value.values())
        if vals:
            ax.set_yscale("log")
            lo, hi = min(vals + [1.0]), max(vals + [1.0])
            ax.set_ylim(lo / 1.6, hi * 1.8)
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        else:
            ax.text(0.5, 0.5, "no measured rows", ha="center", va="center", transform=ax.transAxes)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xlim(-0.5, len(labels) - 0.5)
        width = max(6, 110 // max(len(labels), 1))  # characters per line of a size label: no overlaps
        ticks = [textwrap.fill(lab, width, break_long_words=False) for lab in labels]
        ax.set_xticks(range(len(labels)), ticks, fontsize=7)
        ax.set_title(op, fontsize=9, loc="left")
        ax.set_ylabel("speedup vs best\neager reference", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    save_figure(fig, path, dpi=110)


def write_outputs(results: list, cfg: BenchConfig, info: dict, json_path=None, markdown_path=None,
                  plot_path=None) -> list:
    """Write whichever outputs have a path; returns the paths written."""
    written = []
    for path, writer in ((json_path, write_json), (markdown_path, write_markdown), (plot_path, write_plot)):
        if path:
            writer(path, results, cfg, info)  # (atomic writes create the folder: _files)
            written.append(str(path))
    return written
