"""The package's layout rules (issue 10): layers import only downward, with no cycles;
one dispatch mechanism; small files."""
import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "armodel_fast"
CHECKED = ("dispatch.py", "_validate.py", "_ext.py", "ops", "nn", "reference", "kernels")
# The layers, bottom up: a module may import its own layer or the ones below it.
LAYERS = [("reference", "_ext", "_validate"), ("kernels", "dispatch"), ("ops",), ("nn",)]


def _modules():
    for entry in CHECKED:
        path = PKG / entry
        for f in ([path] if path.is_file() else sorted(path.rglob("*.py"))):
            rel = f.relative_to(PKG).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            yield ".".join(("armodel_fast",) + parts), f, rel.name == "__init__"


def _imports(name: str, path: pathlib.Path, is_pkg: bool):
    """The armodel_fast modules ``path`` imports at module level (not inside functions)."""
    package = name if is_pkg else name.rsplit(".", 1)[0]
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base.startswith("armodel_fast"):
                yield base
                for alias in node.names:
                    yield f"{base}.{alias.name}"
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("armodel_fast"))


def _graph():
    mods = {name: (path, is_pkg) for name, path, is_pkg in _modules()}
    return {name: sorted({m for m in _imports(name, *mods[name]) if m in mods and m != name}) for name in mods}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} is in no layer")


def test_no_import_cycles():
    graph, done, stack = _graph(), set(), []

    def visit(m):
        if m in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
        if m in done:
            return
        stack.append(m)
        for n in graph[m]:
            if not n.startswith(m + "."):  # a package's __init__ importing its own submodules is no cycle
                visit(n)
        stack.pop()
        done.add(m)

    for m in graph:
        visit(m)


def test_layers_import_only_downward():
    for m, deps in _graph().items():
        for n in deps:
            assert _layer(n) <= _layer(m), f"{m} imports {n}, a higher layer"


def test_reference_imports_only_torch():
    for f in (PKG / "reference").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                for n in names:
                    assert node.__class__ is ast.ImportFrom and node.level or n.split(".")[0] in (
                        "torch", "math", "typing", "__future__"), f"{f.name} imports {n}"


def test_one_dispatch_mechanism():
    """Backends are chosen by the dispatch table: few ``backend ==`` branches remain."""
    hits = [f"{f.relative_to(PKG)}:{i}" for f in PKG.rglob("*.py")
            for i, line in enumerate(f.read_text().splitlines(), 1) if "backend ==" in line]
    assert len(hits) <= 5, hits


@pytest.mark.parametrize("entry", CHECKED)
def test_files_stay_small(entry):
    path = PKG / entry
    for f in [path] if path.is_file() else path.rglob("*.py"):
        assert len(f.read_text().splitlines()) <= 400, f"{f.relative_to(PKG)} is over 400 lines"
