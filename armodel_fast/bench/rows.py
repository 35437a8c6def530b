"""The registry of benchmark cases: every op family, its sizes, and the rows a config selects.

Both front ends read it: ``armodel-fast bench`` (:mod:`armodel_fast.cli`, through
:func:`all_rows`) and the pytest-benchmark files ``benchmarks/bench_<op>.py``
(through ``benchmarks/conftest.py``). To add a family, write
``cases_<op>.py`` defining ``FAMILIES = {"<name>": Family(SIZES, rows)}`` and add
the module to :data:`CASE_MODULES` below.
"""
from __future__ import annotations

from . import cases_flows, cases_made, cases_masked_linear, cases_nade, cases_nade_variants
from .core import BenchConfig

# One entry per cases file, in the order the families are run and reported.
CASE_MODULES = (cases_nade, cases_nade_variants, cases_masked_linear, cases_made, cases_flows)

FAMILIES = {name: family for module in CASE_MODULES for name, family in module.FAMILIES.items()}
ROW_BUILDERS = {name: family.rows for name, family in FAMILIES.items()}  # the --family choices (cli.py)
SIZES = {name: family.sizes for name, family in FAMILIES.items()}
# Run only when asked for (--family flows): the peers' D-pass sampling rows take minutes.
OPT_IN_FAMILIES = {"flows"}


def sizes(family: str, cfg: BenchConfig) -> list:
    """The sizes ``cfg`` asks for (``--B/--D/--H`` override every one), without duplicates."""
    table = FAMILIES[family].sizes
    prefix = "quick" if cfg.quick else ""
    chosen = table[prefix + "_sweep" if prefix else "sweep"] if cfg.sweep else table[prefix or "headline"]
    out = []
    for s in chosen:
        s = dict(s)
        if cfg.B is not None and "B" in s:
            s["B"] = cfg.B
        if cfg.D is not None:
            s["D"] = cfg.D
        if cfg.H is not None:
            s["H" if "H" in s else "hidden"] = cfg.H if "H" in s else (cfg.H, cfg.H)
        if s not in out:
            out.append(s)
    return out


def size_label(s: dict) -> str:
    if "layer" in s:
        n_in = s["D"] if s["layer"] == "input" else s["H"]
        return (f"B={s['B']} {n_in}->{s['H']}" + (" hidden layer" if s["layer"] == "hidden" else "")
                + (f" {s['order']} order" if "order" in s else ""))
    parts = [f"{k}={v}" for k, v in s.items() if k != "hidden"]
    if "hidden" in s:
        parts.append("hidden=" + "x".join(map(str, s["hidden"])))
    return " ".join(parts)


def all_rows(cfg: BenchConfig) -> list:
    """Every row ``cfg`` selects, op family by family, size by size. ``cfg.filter`` keeps
    the rows whose ``"op provider"`` contains it, plus the eager reference rows of the
    same op and size (the ratio needs them)."""
    unknown = [f for f in cfg.families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"families must be among {tuple(FAMILIES)}, got {unknown}")
    rows = []
    for family, spec in FAMILIES.items():
        if family not in cfg.families and (cfg.families or family in OPT_IN_FAMILIES):
            continue
        for s in sizes(family, cfg):
            group = spec.rows(cfg, s)
            if not any(row.matches(cfg.filter) for row in group):
                continue
            ops = {row.op for row in group if row.matches(cfg.filter)}
            for row in group:
                if row.matches(cfg.filter) or (row.reference and row.op in ops):
                    row.size, row.size_label = s, size_label(s)
                    rows.append(row)
    return rows


def find_row(cfg: BenchConfig, key: str):
    """The row of ``all_rows(cfg)`` whose :attr:`Row.key` is ``key``."""
    for row in all_rows(cfg):
        if row.key == key:
            return row
    raise KeyError(f"no benchmark row {key!r} in this configuration")
