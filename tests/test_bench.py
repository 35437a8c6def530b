"""``armodel-fast bench``: outputs (JSON, markdown, PNG), --filter, sizes, the memory subprocess;
the harness's layout (one registry of cases, shared with ``benchmarks/``; no import cycle).

Nothing here is a speed assertion: tiny sizes, one timed call per row.
"""
import ast
import graphlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from armodel_fast import bench
from armodel_fast.bench import rows as registry
from armodel_fast.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
BENCH_PACKAGE = REPO / "armodel_fast" / "bench"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OPS = {"nade log_prob fwd", "nade log_prob fwd+bwd", "nade sample", "masked_linear fwd", "masked_linear fwd+bwd",
       "made fwd", "made fwd+bwd", "made train", "made sample"} | {f"{m} {op}" for m in ("categorical_nade", "rnade")
                                     for op in ("log_prob fwd", "log_prob fwd+bwd", "sample")}
QUICK = ["bench", "--quick", "--repeats", "1", "--no-compile"]


@pytest.fixture(scope="module")
def quick_sweep(tmp_path_factory):
    """The gpu_check.sh command line (explicit --json/--markdown/--plot, --sweep) at --quick sizes."""
    out = tmp_path_factory.mktemp("bench")
    paths = {k: out / f"b.{k}" for k in ("json", "md", "png")}
    rc = main(QUICK + ["--sweep", "--no-memory", "--json", str(paths["json"]), "--markdown", str(paths["md"]),
                       "--plot", str(paths["png"])])
    assert rc == 0
    return paths


def test_json_has_every_op_and_machine(quick_sweep):
    data = json.loads(quick_sweep["json"].read_text())
    rows = data["rows"]
    assert {r["op"] for r in rows} == OPS
    for op in OPS:  # the sweep: two sizes of every op
        assert len({r["size_label"] for r in rows if r["op"] == op}) == 2
    for r in rows:
        assert (r["median_ms"] is not None and r["median_ms"] > 0) or r["note"], r
        assert r["kind"] in ("reference", "baseline", "compiled", "kernel")
        if r["median_ms"] is None:
            assert r["speedup_vs_best_reference"] is None
    # every op and size has a measured eager reference, whose best has ratio 1
    for op in OPS:
        for label in {r["size_label"] for r in rows if r["op"] == op}:
            refs = [r for r in rows if r["op"] == op and r["size_label"] == label and r["reference"]]
            assert refs and max(r["speedup_vs_best_reference"] for r in refs) == pytest.approx(1.0)
    baselines = [r for r in rows if r["baseline"]]
    assert {r["provider"] for r in baselines} == {"unmasked F.linear", "unmasked MLP"}
    assert not any(r["reference"] for r in baselines)
    skipped = [r for r in rows if r["kind"] == "compiled"]
    assert skipped and all(r["note"] == "--no-compile" for r in skipped)
    machine = data["machine"]
    for key in ("cpu", "cores", "torch", "commit", "date", "device", "threads"):
        assert key in machine
    assert machine["torch"] == torch.__version__ and machine["device"] == "cpu"
    assert data["config"]["sweep"] and data["config"]["quick"]


def test_markdown_table(quick_sweep):
    text = quick_sweep["md"].read_text()
    lines = text.splitlines()
    assert "cores" in lines[0] and f"torch {torch.__version__}" in lines[0]
    header = lines.index("| op | size | provider | median ms | vs best ref | peak MiB | note |")
    assert lines[header + 1].startswith("|---|")
    table = [line for line in lines[header:] if line.startswith("|")]
    assert len(table) == 2 + len(json.loads(quick_sweep["json"].read_text())["rows"])
    assert all(len(re.split(r"(?<!\\)\|", line)) == 9 for line in table)  # 7 cells; pipes in text escaped
    assert "masked\\_linear fwd" in text and "dense W\\*M (ref)" in text


def test_png(quick_sweep):
    data = quick_sweep["png"].read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000


def test_filter_selects_ops_and_out_dir(tmp_path, capsys):
    assert main(QUICK + ["--no-memory", "--filter", "masked_linear", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert {r["op"] for r in rows} == {"masked_linear fwd", "masked_linear fwd+bwd"}
    assert (tmp_path / "bench.md").is_file() and (tmp_path / "bench.png").read_bytes()[:8] == PNG_SIGNATURE
    text = capsys.readouterr().out
    assert "masked_linear fwd+bwd" in text and "nade" not in text


def test_filter_on_provider_keeps_the_references():
    rows = bench.all_rows(bench.BenchConfig(device="cpu", quick=True, filter="torch.compile dense"))
    ops, providers = ("masked_linear fwd", "masked_linear fwd+bwd"), ("dense W*M", "torch.compile dense W*M")
    assert {(r.op, r.provider) for r in rows} == {(op, p) for op in ops for p in providers}


def test_filter_matching_nothing_is_an_error(capsys):
    assert main(QUICK + ["--no-memory", "--filter", "no such op"]) == 2
    assert "selects no rows" in capsys.readouterr().err


def test_memory_subprocess_one_row(tmp_path):
    out = tmp_path / "m.json"
    assert main(QUICK + ["--filter", "masked_linear fwd dense", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["op"], r["provider"]) for r in rows] == [("masked_linear fwd", "dense W*M")]
    assert rows[0]["median_ms"] > 0 and rows[0]["note"] is None
    if sys.platform.startswith("linux"):
        assert rows[0]["peak_mib"] is not None and rows[0]["peak_mib"] >= 0


def test_gpu_check_command_line_parses():
    args = build_parser().parse_args(["bench", "--device", "cuda", "--sweep", "--json", "a.json",
                                      "--markdown", "a.md", "--plot", "a.png"])
    assert args.sweep and args.device == "cuda" and (args.json, args.markdown, args.plot) == ("a.json", "a.md", "a.png")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_an_error(capsys):
    assert main(["bench", "--device", "cuda", "--quick", "--no-memory"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_sizes_headline_sweep_and_overrides():
    cfg = bench.BenchConfig(device="cpu")
    assert bench.sizes("nade", cfg) == [{"B": 256, "D": 784, "H": 500}]
    assert [(s["H"], s["layer"], s.get("order", "random")) for s in bench.sizes("masked_linear", cfg)] == [
        (500, "input", "random"), (2000, "input", "random"), (2000, "hidden", "random"), (500, "input", "natural"),
        (2000, "input", "natural")]
    assert bench.sizes("made train", cfg) == [{"B": 100, "D": 784, "hidden": (500,)},
                                              {"B": 100, "D": 784, "hidden": (2000, 2000)},
                                              {"B": 100, "D": 784, "hidden": (500,), "order": "random"}]
    assert bench.sizes("made", cfg) == [{"B": 128, "D": 784, "hidden": (2000, 2000)}]
    assert bench.sizes("made sample", cfg) == [{"n": 16, "D": 784, "hidden": (2000, 2000)}]
    sweep = bench.sizes("nade", bench.BenchConfig(device="cpu", sweep=True))
    assert {s["D"] for s in sweep} == {64, 196, 784} and {s["H"] for s in sweep} == {128, 500}
    # --B/--D/--H replace those dimensions everywhere; duplicates collapse
    tiny = bench.BenchConfig(device="cpu", sweep=True, B=4, D=8, H=4)
    assert bench.sizes("nade", tiny) == [{"B": 4, "D": 8, "H": 4}]
    assert bench.sizes("made", tiny) == [{"B": 4, "D": 8, "hidden": (4, 4)}]
    assert bench.sizes("made sample", tiny) == [{"n": 16, "D": 8, "hidden": (4, 4)}]


def test_kernel_rows_follow_explain():
    rows = bench.all_rows(bench.BenchConfig(device="cpu", quick=True, compile="off"))
    reasons = bench.kernel_skip_reasons("masked_linear", "cpu")
    kernel = {r.provider: r.skip for r in rows if r.op == "masked_linear fwd" and r.kind == "kernel"}
    assert kernel == reasons
    assert all(isinstance(why, str) and why for why in reasons.values() if why is not None)
    assert len({r.key for r in rows}) == len(rows)  # the subprocess finds its row by key



def test_auto_rows_run_and_say_what_ran(quick_sweep):
    """Every op's ``auto`` row is timed (not skipped) and its note names the backend it ran,
    with the size rule's reason when that was the reference."""
    rows = [r for r in json.loads(quick_sweep["json"].read_text())["rows"] if r["provider"] == "auto"]
    assert {r["op"] for r in rows} == OPS
    for r in rows:
        assert r["median_ms"] is not None and r["median_ms"] > 0, r
        assert re.fullmatch(r"auto ran (cpp|reference|triton|cuda)(: .+)?", r["info"]), r
    small = [r for r in rows if r["op"] == "masked_linear fwd"]  # quick sizes: far below the size rule
    assert small and all(r["info"].startswith("auto ran reference: too small") for r in small)


def test_interleave_times_providers_in_turns(tmp_path, monkeypatch):
    """--interleave: each op and size's providers are called in rounds (one call each per round,
    in an order that changes between rounds), every runnable row gets its repeats, the header
    says so, and peak memory still comes from a subprocess per row."""
    measure_module = sys.modules["armodel_fast.bench.measure"]  # (bench.measure is the function)
    calls = []
    real = measure_module.synchronized_call

    def spy(row, cfg):
        fn = real(row, cfg)
        def run():
            calls.append(row.provider)
            return fn()
        return run
    monkeypatch.setattr(measure_module, "synchronized_call", spy)
    cfg = bench.BenchConfig(device="cpu", quick=True, compile="off", repeats=6, memory=False, interleave=True,
                            families=("masked_linear",), filter="masked_linear fwd+bwd")
    rows = bench.all_rows(cfg)
    results = bench.run_bench(cfg, rows)
    runnable = [r.provider for r in rows if r.skip is None and r.op == "masked_linear fwd+bwd"]
    assert len(runnable) >= 3
    n = len(runnable)
    warm = sum(r.warmup for r in rows if r.skip is None)
    rounds = [calls[warm + i * n:warm + (i + 1) * n] for i in range(6)]
    assert all(sorted(r) == sorted(runnable) for r in rounds)  # timed rounds: every provider once per round
    assert len({tuple(r) for r in rounds}) > 1  # ... not always in the same order
    for r in results:
        if r["provider"] in runnable:
            assert len(r["times_ms"]) == 6 and r["median_ms"] > 0 and r["peak_mib"] is None
    assert "timed in turns" in bench.machine_line(bench.machine_info(cfg), cfg)
    rc = main(QUICK + ["--interleave", "--family", "masked_linear", "--filter", "cpp", "--json",
                       str(tmp_path / "b.json")])
    assert rc == 0
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["config"]["interleave"] is True
    assert any(r["provider"] == "cpp" and r["peak_mib"] is not None for r in data["rows"])

# ---------------------------------------------------------------------------- layout of the harness
def _bench_imports(path: Path) -> set:
    """Modules of armodel_fast.bench that ``path`` imports (relative imports inside the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {a.name for a in node.names}
    return found


def test_bench_package_has_no_import_cycle():
    graph = {p.stem: _bench_imports(p) for p in BENCH_PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert set().union(*graph.values()) <= set(graph), "an import of a module that does not exist"
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    assert graph["core"] == set() and order.index("core") < order.index("rows") < order.index("measure")
    assert all(graph[m] == {"core"} for m in graph if m.startswith("cases_")), graph


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_benchmarks_import_no_private_name():
    files = sorted((REPO / "benchmarks").glob("*.py"))
    assert {f.name for f in files} >= {"conftest.py", "bench_nade.py", "bench_masked_linear.py", "bench_made.py"}
    for f in files:
        text = f.read_text()
        for node in ast.walk(ast.parse(text)):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = (node.module or "").split(".") + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [part for a in node.names for part in a.name.split(".")]
            assert not [n for n in names if _private(n)], f"{f.name}:{node.lineno} imports a private name"
        assert not re.search(r"\b(af|armodel_fast)(\.\w+)*\._(?!_)", text), f"{f.name} uses a private name"


def test_benchmarks_collect_the_same_rows_as_the_cli():
    """``pytest benchmarks/`` parametrises over exactly the rows of ``armodel-fast bench`` (--quick),
    every family named (the opt-in ones, such as flows, run only when named)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "--bench-quick", "--bench-device", "cpu", "benchmarks/"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    ids = {line.split("[", 1)[1].rsplit("]", 1)[0] for line in collected}
    rows = bench.all_rows(bench.BenchConfig(device="cpu", quick=True, families=tuple(registry.FAMILIES)))
    assert len(collected) == len(rows) and ids == {r.key for r in rows}
    by_file = {f: {line.split("::")[0] for line in collected if f in line} for f in ("bench_nade", "bench_made")}
    assert all(by_file.values())


def test_a_new_family_is_one_registry_entry(monkeypatch, tmp_path):
    """What a new cases file provides (``Family(sizes, rows)``) is all --family, all_rows and the run need."""
    tiny = {"B": 3, "D": 5}
    sizes = {"headline": [tiny], "sweep": [tiny], "quick": [tiny], "quick_sweep": [tiny]}

    def toy_rows(cfg, s):
        x = torch.ones(s["B"], s["D"])
        return [bench.Row("toy sum", "reference", lambda cfg: lambda: x.sum()),
                bench.Row("toy sum", "kernel x2", lambda cfg: lambda: (x * 2).sum(), kind="kernel")]
    monkeypatch.setitem(registry.FAMILIES, "toy", bench.Family(sizes, toy_rows))
    cfg = bench.BenchConfig(device="cpu", families=("toy",), repeats=1, memory=False)
    results = bench.run_bench(cfg)
    assert [(r["op"], r["provider"], r["size_label"]) for r in results] == [
        ("toy sum", "reference", "B=3 D=5"), ("toy sum", "kernel x2", "B=3 D=5")]
    assert all(r["median_ms"] > 0 and r["speedup_vs_best_reference"] > 0 for r in results)
    with pytest.raises(ValueError, match="sizes must have the keys"):
        bench.Family({"headline": [tiny]}, toy_rows)
    with pytest.raises(ValueError, match="families must be among"):
        bench.all_rows(bench.BenchConfig(device="cpu", families=("no such family",)))


def test_every_cli_family_has_a_benchmark_file():
    declared = set()
    for f in (REPO / "benchmarks").glob("bench_*.py"):
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["FAMILIES"]:
                declared |= set(ast.literal_eval(node.value))
    assert declared == set(bench.FAMILIES) == set(bench.ROW_BUILDERS)  # ROW_BUILDERS: cli.py's --family choices


def test_profile_writes_one_table_per_kernel_row(tmp_path, capsys):
    assert main(QUICK + ["--no-memory", "--family", "masked_linear", "--filter", "fwd cpp", "--profile",
                         "--out", str(tmp_path)]) == 0
    text = (tmp_path / "profile.txt").read_text()
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    kernel_rows = [r for r in rows if r["provider"] == "cpp" and r["median_ms"] is not None]
    assert kernel_rows and text.count("## masked_linear") == len(kernel_rows)
    assert re.search(r"^CPU time \(all threads\) \d+ us in \d+ events$", text, flags=re.M) and "aten::" in text
    assert all("profile" not in r for r in rows)  # the tables stay out of the JSON
    headers = [line for line in text.splitlines() if line.startswith("## ")]
    assert headers and all(h.endswith("] cpp") for h in headers)  # the reference rows (timed too) are not profiled


def test_profile_with_interleave_is_an_error(capsys):
    assert main(QUICK + ["--no-memory", "--profile", "--interleave"]) == 2
    assert "--profile" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--interleave"):  # the same from the Python API
        bench.BenchConfig(profile=True, interleave=True)


def test_profile_of_no_kernel_row_says_so(tmp_path):
    assert main(QUICK + ["--no-memory", "--family", "masked_linear", "--filter", "dense", "--profile",
                         "--out", str(tmp_path)]) == 0
    assert (tmp_path / "profile.txt").read_text().startswith("no kernel row was profiled")
