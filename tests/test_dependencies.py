"""pyproject.toml declares exactly the distributions that mmkd's code imports, and pins each in constraints.txt.

The imports are read from the source (ast), every `import x`, `from x import y` and
`importlib.import_module("x")` / `importlib.util.find_spec("x")`; each top-level module is mapped to
its distribution by the installed packages' own records (importlib.metadata.packages_distributions).
"""

import ast
import functools
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from conftest import ROOT

SRC = ROOT / "src" / "mmkd"
# Distributions a module needs without importing them by that name: {imported module: distribution}.
RUNTIME_NEEDS = {
    "torch.utils.tensorboard": "tensorboard",  # torch's SummaryWriter imports tensorboard
    "openslide": "openslide-bin",  # the OpenSlide C library that openslide-python loads
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _is_dynamic_import(node) -> bool:
    return (isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("import_module", "find_spec")
            and len(node.args) > 0)


def _imports(path):
    """(module, inside a function or try) for every import in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Try)):
            guarded.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif _is_dynamic_import(node) and isinstance(node.args[0], ast.Constant):
            names = [node.args[0].value]
        elif isinstance(node, ast.For) and isinstance(node.target, ast.Name) and isinstance(node.iter, ast.Tuple):
            # for module in ("onnx", "onnxruntime"): importlib.import_module(module)
            calls = [c for c in ast.walk(node) if _is_dynamic_import(c) and isinstance(c.args[0], ast.Name)
                     and c.args[0].id == node.target.id]
            names = [e.value for e in node.iter.elts if isinstance(e, ast.Constant)] if calls else []
        else:
            continue
        yield from ((name, id(node) in guarded) for name in names)


@functools.cache
def _imported(folder: Path = SRC) -> dict[str, dict[str, bool]]:
    """distribution -> {file: every import of it there is lazy}, for the third-party imports under `folder`."""
    owners = packages_distributions()
    local = {p.stem for p in (ROOT / "tests").rglob("*.py")} | {p.stem for p in (ROOT / "bench").glob("*.py")}
    out: dict[str, dict[str, bool]] = {}
    for path in sorted(folder.rglob("*.py")):
        for module, lazy in _imports(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top == "mmkd" or (folder != SRC and top in local):
                continue
            assert top in owners, f"{path.relative_to(ROOT)} imports {top!r}, which no installed distribution provides"
            dists = [_norm(d) for d in owners[top]]
            dists += [_norm(d) for m, d in RUNTIME_NEEDS.items() if module == m or module.startswith(m + ".")]
            for dist in dists:
                seen = out.setdefault(dist, {})
                key = str(path.relative_to(ROOT))
                seen[key] = seen.get(key, True) and lazy
    return out


def _declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = lambda req: _norm(re.match(r"[A-Za-z0-9._-]+", req).group(0))
    core = {name(r) for r in project["dependencies"]}
    extras = {extra: {name(r) for r in reqs if name(r) != "mmkd"}
              for extra, reqs in project["optional-dependencies"].items()}
    return core, extras


def test_declared_dependencies_are_exactly_the_imported_ones():
    imported = _imported()
    core, extras = _declared()
    runtime = core | set().union(*(reqs for extra, reqs in extras.items() if extra not in ("test", "lint")))
    assert sorted(set(imported) - runtime) == [], "imported by src/mmkd but not declared in pyproject.toml"
    assert sorted(runtime - set(imported)) == [], "declared in pyproject.toml but never imported by src/mmkd"


def test_the_tests_need_nothing_beyond_the_test_extra():
    core, extras = _declared()
    declared = core | set().union(*(extras[name] for name in ("test", "onnx", "slides", "prepare", "tensorboard")))
    undeclared = {dist: sorted(files) for dist, files in _imported(ROOT / "tests").items() if dist not in declared}
    assert not undeclared, f"imported by the tests but not brought by mmkd[test]: {undeclared}"


def test_optional_extras_are_imported_only_where_used():
    """An extra's distribution is imported inside a function or a try, so `import mmkd` works without it."""
    imported = _imported()
    core, extras = _declared()
    optional = set().union(*(reqs for extra, reqs in extras.items() if extra not in ("test", "lint"))) - core
    for dist in sorted(optional):
        eager = [f for f, lazy in imported[dist].items() if not lazy]
        assert not eager, f"{dist} (an optional extra) is imported at module level in {eager}"


def test_every_declared_distribution_is_pinned_in_constraints():
    core, extras = _declared()
    pinned = {_norm(line.split("==")[0]) for line in (ROOT / "constraints.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    missing = sorted((core | set().union(*extras.values())) - pinned)
    assert not missing, f"declared in pyproject.toml but not pinned in constraints.txt: {missing}"
