"""Benchmarks behind ``python -m armodel_fast bench``.

For each op (NADE log-prob forward / forward+backward / sampling,
masked_linear forward / forward+backward, MADE forward / forward+backward,
MADE sampling) and each size, the eager reference forms, ``torch.compile`` of the reference and
every kernel backend (those that cannot run here are listed with the reason
from :func:`armodel_fast.explain`), as time, ratio and peak memory.

One set of cases, two front ends: ``armodel-fast bench`` (this package's run
loop: one table, JSON, markdown and PNG with machine, torch version and commit)
and pytest-benchmark (``pytest benchmarks/``, whose ``bench_<op>.py`` files
parametrise over the same rows).

Layout (each module imports only those before it): :mod:`.core` (config,
:class:`Row`, :class:`Family` and the helpers cases use), ``cases_<op>.py`` (one
per op: sizes and row builders), :mod:`.rows` (the registry: which cases files
exist, the sizes a config selects, :func:`all_rows`), :mod:`.measure` (timing,
peak memory, the per-row subprocess, the run loop), :mod:`.report` (rich
tables, JSON, markdown, PNG).

Rows are data: a :class:`Row` is ``(op, provider, make)`` where ``make(cfg)``
sets up inputs and returns the zero-argument callable to time, or a ``skip``
reason instead. Each cases file defines ``FAMILIES = {name: Family(sizes,
rows)}``: ``sizes`` holds the headline sizes, the ``--sweep`` and the
``--quick`` sizes, ``rows(cfg, size) -> [Row, ...]``. To add an op family,
write ``cases_<op>.py`` and add it to ``rows.CASE_MODULES`` (one line); then
``--family <name>`` selects it, and a five-line ``benchmarks/bench_<op>.py``
(``FAMILIES = ("<name>",)`` and one test) times it under pytest-benchmark.
Rows of ``kind="reference"`` are the eager reference forms; every row's ratio
is taken against the fastest of them for the same op and size. Rows of
``kind="baseline"`` (an unmasked layer, say) are shown for scale only.

Time: median of ``repeats`` calls (fewer for rows that set ``Row.repeats``,
such as the seconds-long reference MADE sampler: one call) after warm-up (one
call; two for torch.compile rows, whose first call compiles), with CUDA
synchronised.

Allocator (``allocator="pinned"``, the default; ``--allocator default`` leaves it):
before timing, glibc's malloc thresholds are fixed where its own dynamic rule
ends up (:func:`.measure.pin_allocator`), so a row's time does not depend on the
rows timed before it in the same process.

Peak memory (MEMORY_METHOD): each row runs in a fresh subprocess. On CPU it is
the rise of the process's resident-set high-water mark during one call, after
warm-up: VmHWM is reset through ``/proc/self/clear_refs`` and compared with
VmRSS just before the call. Before that reading (and after the timing) glibc is told, through ``mallopt``, to mmap
every allocation of 64 KiB or more and its free heap is trimmed, so freed
tensors leave the RSS and are not silently reused. It counts
everything the call touches (outputs, tensors saved for backward, gradients,
workspaces), not inputs or parameters that exist before it, nor caches built
during warm-up that live across calls (masked_linear's prepared weights when
the weight does not change). tracemalloc cannot be used: it does not see
torch's CPU allocations. On CUDA it is ``torch.cuda.max_memory_allocated``
minus the allocation before the call.
"""
from .core import COMPILE_AUTO_MAX_D, BenchConfig, Family, Row, kernel_skip_reasons
from .measure import (MEMORY_METHOD, add_ratios, allocator_state, child_main, measure, pin_allocator, profile_call,
                      run_bench, synchronized_call)
from .report import (machine_info, machine_line, markdown_table, print_tables, profiles_text, write_json,
                     write_markdown, write_outputs, write_plot)
from .rows import FAMILIES, ROW_BUILDERS, SIZES, all_rows, find_row, sizes

__all__ = ["BenchConfig", "COMPILE_AUTO_MAX_D", "FAMILIES", "Family", "MEMORY_METHOD", "ROW_BUILDERS", "Row",
           "SIZES", "add_ratios", "all_rows", "allocator_state", "child_main", "find_row", "kernel_skip_reasons",
           "machine_info", "machine_line", "markdown_table", "measure", "pin_allocator", "print_tables",
           "profile_call", "profiles_text", "run_bench", "sizes", "synchronized_call", "write_json",
           "write_markdown", "write_outputs", "write_plot"]
