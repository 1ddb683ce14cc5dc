"""The package's import graph, read from the source with `ast`: the layers stay as DESIGN.md draws them.

Every import counts, module-level or inside a function (a function-level import is still a
dependency; it only runs later), and `from mmkd import X` is resolved through the lazy table of
mmkd/__init__.py to the module that defines X. Checked: models/ depends on neither training/,
teachers/ nor the demo; nothing outside mmkd.demo imports it; the package has no import cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "mmkd"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _lazy_table(init: Path) -> dict[str, str]:
    """mmkd/__init__.py's `_LAZY = {"name": "module:attr"}` -> {name: module}."""
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            table = ast.literal_eval(node.value)
            return {name: target.split(":")[0] for name, target in table.items()}
    raise AssertionError("mmkd/__init__.py has no _LAZY table")


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the mmkd modules it imports (directly), anywhere in its source."""
    modules = _modules()
    lazy = _lazy_table(modules["mmkd"])
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_from(name, is_package, node)
                for alias in node.names:
                    if base == "mmkd" and alias.name in lazy:
                        targets.add(lazy[alias.name])
                    elif f"{base}.{alias.name}" in modules:
                        targets.add(f"{base}.{alias.name}")
                    else:
                        targets.add(base)
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
                  == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
                targets.add(str(node.args[0].value))  # importlib.import_module("mmkd.x") with a fixed name
        edges = set()
        for target in targets:
            if target != "mmkd" and target.startswith("mmkd.") and target in modules:
                edges.add(target)
                # Importing mmkd.a.b runs mmkd/a/__init__.py first: a dependency on the package too
                # (not for a module inside that package, which is imported by it, not into it).
                parts = target.split(".")
                for i in range(2, len(parts)):
                    parent = ".".join(parts[:i])
                    if not (name == parent or name.startswith(parent + ".")):
                        edges.add(parent)
            elif target.startswith("mmkd.") and target not in modules:
                raise AssertionError(f"{name} imports {target}, which does not exist")
        graph[name] = edges - {name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module `start` depends on, directly or not -> the module that imports it (for messages)."""
    seen: dict[str, str] = {}
    stack = [start]
    while stack:
        current = stack.pop()
        for target in graph.get(current, ()):
            if target not in seen:
                seen[target] = current
                stack.append(target)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_graph_sees_function_level_and_lazy_imports(graph):
    # Independent of the layering rules: facts of the source that the checks below rely on.
    assert "mmkd.training.loop" in graph["mmkd.training.cli_pretrain"]  # imported inside run()
    assert "mmkd.api" in graph["mmkd.evaluation.cli"]  # `from mmkd import load_model` inside run()
    assert "mmkd.teachers" in graph["mmkd.api"]


@pytest.mark.parametrize("forbidden", ["mmkd.training", "mmkd.teachers", "mmkd.demo"])
def test_models_depend_on_neither_training_teachers_nor_demo(graph, forbidden):
    for module in (m for m in graph if m == "mmkd.models" or m.startswith("mmkd.models.")):
        bad = {t: via for t, via in reachable(graph, module).items() if t == forbidden or t.startswith(forbidden + ".")}
        assert not bad, f"{module} depends on {sorted(bad)} (imported by {sorted(set(bad.values()))})"


def test_nothing_in_the_library_imports_the_demo(graph):
    importers = {m: sorted(t for t in targets if t == "mmkd.demo" or t.startswith("mmkd.demo."))
                 for m, targets in graph.items() if not (m == "mmkd.demo" or m.startswith("mmkd.demo."))}
    assert not {m: t for m, t in importers.items() if t}


def test_the_package_has_no_import_cycle(graph):
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_cycle(graph):
    planted = {k: set(v) for k, v in graph.items()}
    planted["mmkd.models.student"].add("mmkd.training.loop")  # training.loop imports models.student
    found = cycles(planted)
    assert any({"mmkd.models.student", "mmkd.training.loop"} <= set(c) for c in found)
