"""The shape of the code: no import loops in ``cds_service``, and the production app without the sandbox.

The graph is read from the source (AST), not from a run: an import inside a function is an edge too, as it
runs the moment that function is first called. ``from package import name`` is an edge to the submodule when
``name`` is one, else to the package; a package's ``__init__`` is not counted as imported by its submodules
(the usual convention of import-graph tools: each module depends on what it names).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, config_copy, probe_production_app

PACKAGE = ROOT / "cds_service"


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own name, not ``__init__``)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported_names(tree: ast.AST, package: str) -> Iterator[tuple[str, str | None]]:
    """(module, name imported from it or None) for every import statement, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            yield from ((base, alias.name) for alias in node.names)


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (module level and function level)."""

    def nearest(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for module, imported in _imported_names(ast.parse(path.read_text(encoding="utf-8")), package):
            submodule = f"{module}.{imported}" if imported else None
            target = submodule if submodule in modules else nearest(module)
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_loop_through_a_function_level_import(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def later():\n    from pkg.c import x\n")
    (package / "c.py").write_text("from . import a\nx = 1\n")
    (package / "d.py").write_text("import pkg.a\n")
    graph = import_graph(module_files(package))
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_cds_service_has_no_import_cycle():
    graph = import_graph(module_files())
    assert len(graph) > 50 and "cds_service.tables" in graph["cds_service.migrations.env"]
    assert cycles(graph) == []


def test_no_module_imports_another_by_a_string():
    """``importlib.import_module("cds_service...")`` would hide an edge (and a loop) from the graph."""
    sources = {name: path.read_text(encoding="utf-8") for name, path in module_files().items()}
    hidden = [name for name, text in sources.items() if "import_module(" in text or "__import__(" in text]
    assert hidden == []


@pytest.mark.slow
def test_the_production_app_does_not_import_the_sandbox(tmp_path):
    """What ``serve`` (without ``--dev``) runs in each worker, and preloads in the master."""
    report = probe_production_app(config_copy(tmp_path), cwd=tmp_path)
    assert report["sandbox"] == []
    assert report["answers"] == {
        "/healthz": 200,
        "/readyz": 200,
        "/docs": 200,
        "/admin": 404,  # no admin token configured
        "/sandbox": 404,  # `serve --dev` only
        "POST /cds-services/tacrolimus-order-sign": 401,  # no caller's token
    }


def _top_level_imports(folder: Path) -> dict[str, set[str]]:
    """File name -> the first part of every module it imports (absolute imports, at any depth)."""
    found = {}
    for path in sorted(folder.glob("*.py")):
        names = set()
        for module, _ in _imported_names(ast.parse(path.read_text(encoding="utf-8")), ""):
            names.add(module.split(".")[0])
        found[path.name] = names
    return found


def test_the_test_helpers_have_one_import_name_and_bench_needs_no_tests():
    """``support`` and ``tests.support`` would be two modules (each with its own state); ``bench/`` runs
    without the tests folder (what it shares with the tests lives in bench/)."""
    helpers = {path.stem for path in (ROOT / "tests").glob("*.py") if not path.stem.startswith("test_")}
    bare = {
        name: sorted(imported & helpers)
        for name, imported in _top_level_imports(ROOT / "tests").items()
        if imported & helpers
    }
    assert bare == {}
    bench = _top_level_imports(ROOT / "bench")
    assert {name for name, imported in bench.items() if "tests" in imported} == set()


SUBPROCESS_CALLS = {"run", "Popen", "check_output", "check_call"}
SERVICE_CALLS = {"start_service", "ServiceProcess"}


def _marks(decorators: list[ast.expr]) -> set[str]:
    """The ``pytest.mark.<name>`` names among decorators (or in a ``pytestmark`` value)."""
    return {
        node.attr
        for decorator in decorators
        for node in ast.walk(decorator)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "mark"
    }


def _starts_a_process(function: ast.FunctionDef, module: dict[str, ast.FunctionDef], seen: set[str]) -> bool:
    """Whether the test, or a fixture or helper of its module it asks for or calls, starts a process."""
    called: set[str] = set()
    for node in ast.walk(function):
        if not isinstance(node, ast.Call):
            continue
        target = node.func
        if isinstance(target, ast.Name):
            if target.id in SERVICE_CALLS:
                return True
            called.add(target.id)
        elif ast.unparse(target) in {f"subprocess.{name}" for name in SUBPROCESS_CALLS}:
            return True
    called |= {argument.arg for argument in function.args.args}
    return any(_starts_a_process(module[name], module, seen | {name}) for name in called & set(module) - seen)


def test_every_test_that_starts_a_process_is_out_of_the_fast_tier():
    """``make test-fast`` promises no process: a test that starts ``cds-service serve`` or any subprocess
    (itself, or through a fixture or helper of its module) is marked ``slow`` (or ``browser``/``nginx``)."""
    unmarked = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
        assigned = [node for node in tree.body if isinstance(node, ast.Assign)]
        module_marks = _marks([n.value for n in assigned if ast.unparse(n.targets[0]) == "pytestmark"])
        for name, function in module.items():
            out_of_tier = (module_marks | _marks(function.decorator_list)) & {"slow", "browser", "nginx"}
            if name.startswith("test_") and not out_of_tier and _starts_a_process(function, module, {name}):
                unmarked.append(f"{path.name}::{name}")
    assert unmarked == []
