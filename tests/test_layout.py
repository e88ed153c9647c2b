"""The layout holds: no import circle inside initlab, data flowing one way (nothing imports the
app; rundir/ and report/ never import torch, tests/test_cli.py runs that in a fresh process),
and no private name of another library outside initlab/speedups/."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "initlab"
SPEEDUPS = PACKAGE / "speedups"
# public despite the underscore: documented API of the standard library and of Hydra's config keys
PUBLIC = {"_exit", "_target_", "_replace", "_asdict", "_fields", "_make", "_recursive_", "_convert_", "_partial_"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path, name: str) -> set[str]:
    """The initlab modules `path` imports, at any depth of its code (a lazy import is an edge too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:  # `import initlab.x.y` names initlab.x.y; a name inside a module, its module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(path, name) for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return out


def test_the_graph_finds_initlabs_imports() -> None:
    assert "initlab.rundir.store" in GRAPH["initlab.record.watcher"]
    assert "initlab.app.study" in GRAPH["initlab.app.cli"]  # a lazy import, inside a function


def test_no_import_circle() -> None:
    assert _cycles() == []


def test_a_circle_would_be_found(monkeypatch) -> None:
    monkeypatch.setitem(GRAPH, "initlab.rundir.store", GRAPH["initlab.rundir.store"] | {"initlab.record.watcher"})
    assert any({"initlab.record.watcher", "initlab.rundir.store"} <= set(c) for c in _cycles())


@pytest.mark.parametrize("room", ["initlab.rundir", "initlab.report", "initlab.record", "initlab.telemetry",
                                  "initlab.nn", "initlab.models", "initlab.data", "initlab.speedups"])
def test_nothing_imports_the_app(room: str) -> None:
    """Data flows one way: the app (CLI, study recipe, sweep lifecycle) uses the rest, never the reverse."""
    bad = {m: sorted(d for d in deps if d.startswith("initlab.app"))
           for m, deps in GRAPH.items() if m.startswith(room)}
    assert {m: d for m, d in bad.items() if d} == {}


def test_rundir_and_report_do_not_reach_the_recorder_or_the_models() -> None:
    """(The TensorBoard export reads the histogram bins' layout from telemetry.hist: it writes through torch.)"""
    heavy = ("initlab.record", "initlab.telemetry", "initlab.models", "initlab.data", "initlab.train")
    bad = {m: sorted(d for d in deps if d.startswith(heavy) and (m, d) != ("initlab.report.tensorboard",
                                                                       "initlab.telemetry.hist"))
           for m, deps in GRAPH.items() if m.startswith(("initlab.rundir", "initlab.report"))}
    assert {m: d for m, d in bad.items() if d} == {}


def _defined_private_names() -> set[str]:
    """Every _name initlab defines itself (functions, classes, assignments, attributes it sets)."""
    names = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return {n for n in names if n.startswith("_")}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__")) and name not in PUBLIC


def private_uses(path: Path, own: set[str]) -> list[str]:
    """`x._name` where _name is not initlab's own, and imports of a private module or name of another library."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
            found.append(f"{path.name}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith("initlab"):
            names = [*node.module.split("."), *(a.name for a in node.names)]
            found += [f"{path.name}:{node.lineno}: {n}" for n in names if _private(n)]
        elif isinstance(node, ast.Import):
            found += [f"{path.name}:{node.lineno}: {a.name}" for a in node.names
                      if not a.name.startswith("initlab") and any(_private(n) for n in a.name.split("."))]
    return found


OWN = _defined_private_names()


@pytest.mark.parametrize("path", [p for p in MODULES.values() if SPEEDUPS not in p.parents],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_of_another_library_outside_speedups(path: Path) -> None:
    assert private_uses(path, OWN) == []


def test_the_private_name_check_finds_what_it_forbids(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import threading\nimport torch._dynamo\nfrom torch.optim.optimizer import _use_grad_for_differentiable\n"
                   "threading._shutdown()\nax._request_autoscale_view()\nself._own = 1\n")
    assert [u.split(": ")[1] for u in private_uses(bad, OWN | {"_own"})] == [
        "torch._dynamo", "_use_grad_for_differentiable", "._shutdown", "._request_autoscale_view"]
    assert private_uses(SPEEDUPS / "fast_exit.py", OWN) == []  # it reaches them with getattr, which speedups may
