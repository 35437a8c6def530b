"""pytest-benchmark over the cases of ``armodel-fast bench`` (``armodel_fast/bench/cases_*.py``).

Each ``bench_<op>.py`` names its op families (``FAMILIES = ("nade", ...)``) and
has one test taking the ``row`` and ``run_row`` fixtures; here every row that
``armodel_fast.bench.all_rows`` selects for those families becomes one test
case, with the same sizes, providers and setup as the command line. Rows that
cannot run here (a backend without a kernel or a GPU, ``--no-compile``) are
skipped with their reason.

    pytest benchmarks/                          # headline sizes, on cuda if available
    pytest benchmarks/bench_made.py --bench-sweep
    pytest benchmarks/ --bench-quick --benchmark-disable   # smoke test: each row once
    pytest benchmarks/ -k "cpp or reference"    # select providers by test id
"""
from __future__ import annotations

import pytest

from armodel_fast.bench import BenchConfig, all_rows, synchronized_call


def pytest_addoption(parser):
    group = parser.getgroup("armodel-fast bench cases")
    group.addoption("--bench-device", default=None, help="cpu or cuda (default: cuda if available)")
    group.addoption("--bench-sweep", action="store_true", help="several sizes per op (armodel-fast bench --sweep)")
    group.addoption("--bench-quick", action="store_true", help="tiny sizes (armodel-fast bench --quick)")
    group.addoption("--bench-compile", choices=("auto", "on", "off"), default="auto",
                    help="torch.compile rows: auto (default; D-step loops only at small D), on, off")
    group.addoption("--bench-filter", default=None, help="only rows whose 'op provider' contains this text")
    group.addoption("--bench-allocator", choices=("pinned", "default"), default="pinned",
                    help="glibc malloc thresholds: pinned before timing (default) or glibc's dynamic default")


def pytest_collect_file(file_path, parent):
    """Collect ``bench_*.py`` when pytest is pointed at this folder (named files are collected anyway)."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def bench_config(config, families) -> BenchConfig:
    """The :class:`BenchConfig` of this pytest run's ``--bench-*`` options."""
    return BenchConfig(device=config.getoption("--bench-device"), sweep=config.getoption("--bench-sweep"),
                       quick=config.getoption("--bench-quick"), compile=config.getoption("--bench-compile"),
                       filter=config.getoption("--bench-filter"), memory=False, families=tuple(families),
                       allocator=config.getoption("--bench-allocator"))


def pytest_generate_tests(metafunc):
    if "row" not in metafunc.fixturenames:
        return
    cfg = bench_config(metafunc.config, metafunc.module.FAMILIES)
    rows = all_rows(cfg)
    metafunc.parametrize("row", rows, ids=[row.key for row in rows])


@pytest.fixture
def run_row(request, benchmark):
    """``run_row(row)``: time ``row`` with pytest-benchmark (grouped by op and size), or skip it."""
    def run(row):
        if row.skip is not None:
            pytest.skip(row.skip)
        cfg = bench_config(request.config, request.module.FAMILIES)
        fn = synchronized_call(row, cfg)
        benchmark.group = f"{row.op} [{row.size_label}] ({cfg.device})"
        benchmark.extra_info.update(provider=row.provider, kind=row.kind, size=row.size, info=row.info)
        if row.repeats is not None:  # a slow row (seconds per call): that many rounds, one call each
            benchmark.pedantic(fn, rounds=row.repeats, iterations=1, warmup_rounds=row.warmup)
            return
        for _ in range(row.warmup):  # the first calls compile (torch.compile) or prepare weights
            fn()
        benchmark(fn)
    return run
