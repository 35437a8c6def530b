"""Benchmarks behind ``python -m armodel_fast bench``.

For each op (NADE log-prob forward / forward+backward / sampling,
masked_linear forward / forward+backward, MADE forward, MADE sampling) and
each size, the eager reference forms, ``torch.compile`` of the reference and
every kernel backend (those that cannot run here are listed with the reason
from :func:`armodel_fast.explain`), as time, ratio and peak memory.

Layout: :mod:`.core` (config, rows, measuring, the run loop), :mod:`.rows`
(the row builders and their sizes), :mod:`.report` (rich tables, JSON,
markdown, PNG).

Rows are data: a :class:`Row` is ``(op, provider, make)`` where ``make(cfg)``
sets up inputs and returns the zero-argument callable to time, or a ``skip``
reason instead. ``rows.ROW_BUILDERS`` maps an op family to a function
``(cfg, size) -> [Row, ...]`` and ``rows.SIZES`` gives each family's headline
sizes, its ``--sweep`` and its ``--quick`` sizes; to add an op, add both.
Rows of ``kind="reference"`` are the eager reference forms; every row's ratio
is taken against the fastest of them for the same op and size. Rows of
``kind="baseline"`` (an unmasked layer, say) are shown for scale only.

Time: median of ``repeats`` calls (fewer for rows that set ``Row.repeats``,
such as the seconds-long reference MADE sampler: one call) after warm-up (one
call; two for torch.compile rows, whose first call compiles), with CUDA
synchronised.

Peak memory (MEMORY_METHOD): each row runs in a fresh subprocess. On CPU it is
the rise of the process's resident-set high-water mark during one call, after
warm-up: VmHWM is reset through ``/proc/self/clear_refs`` and compared with
VmRSS just before the call. Before that reading (and after the timing, which
runs with the default allocator) glibc is told, through ``mallopt``, to mmap
every allocation of 64 KiB or more and its free heap is trimmed, so freed
tensors leave the RSS and are not silently reused. It counts
everything the call touches (outputs, tensors saved for backward, gradients,
workspaces), not inputs or parameters that exist before it, nor caches built
during warm-up that live across calls (masked_linear's prepared weights when
the weight does not change). tracemalloc cannot be used: it does not see
torch's CPU allocations. On CUDA it is ``torch.cuda.max_memory_allocated``
minus the allocation before the call.
"""
from .core import (COMPILE_AUTO_MAX_D, MEMORY_METHOD, BenchConfig, Row, add_ratios, child_main, measure,
                   run_bench)
from .report import (machine_info, machine_line, markdown_table, print_tables, write_json, write_markdown,
                     write_outputs, write_plot)
from .rows import ROW_BUILDERS, SIZES, all_rows, kernel_skip_reasons, sizes

__all__ = ["BenchConfig", "COMPILE_AUTO_MAX_D", "MEMORY_METHOD", "ROW_BUILDERS", "Row", "SIZES", "add_ratios",
           "all_rows", "child_main", "kernel_skip_reasons", "machine_info", "machine_line", "markdown_table",
           "measure", "print_tables", "run_bench", "sizes", "write_json", "write_markdown", "write_outputs",
           "write_plot"]
