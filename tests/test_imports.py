"""The package's import graph: no module imports another in a circle (function-level imports counted), the
stages that need no deep learning load none, and Keras is imported in one place only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import kaggle_kit

PACKAGE = Path(kaggle_kit.__file__).parent


def _is_type_checking(node: ast.If) -> bool:
    return ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _imports(tree: ast.Module, package: str, modules: set[str]) -> set[str]:
    """The modules of ``package`` that ``tree`` imports anywhere (inside functions too), except under
    ``if TYPE_CHECKING:``, which never runs."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == package):
            parts = node.module.split(".") if node.module else []
            rest = parts if node.level else parts[1:]
            if rest:
                found.add(rest[0])
            else:  # 'from kaggle_kit import blend': the names are modules
                found.update(alias.name for alias in node.names if alias.name in modules)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found & modules


def import_graph(folder: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (a module importing itself is left out)."""
    modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for module in sorted(modules):
        tree = ast.parse((folder / f"{module}.py").read_text(encoding="utf-8"))
        graph[module] = _imports(tree, package, modules) - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted: each holds a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return groups


def test_the_checker_finds_a_circle_closed_by_an_import_inside_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import a\n    return a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
                              "from . import b\n")
    graph = import_graph(pkg, "pkg")
    assert graph == {"a": {"b"}, "b": {"a"}, "c": {"b"}}
    assert cycles(graph) == [["a", "b"]]


def test_kaggle_kit_modules_import_each_other_in_no_circle():
    graph = import_graph(PACKAGE, "kaggle_kit")
    assert graph["cli"] >= {"features", "cv", "blend", "submit", "report", "demo"}  # the graph is really read
    assert graph["blend"] >= {"store"} and "cli" not in graph["demo"] and "ports" not in graph["backbones"]
    assert cycles(graph) == []


def test_blend_and_report_load_no_deep_learning_and_no_backbone_code():
    code = ("import sys, kaggle_kit.blend, kaggle_kit.report; print(sorted(m for m in sys.modules if m.split('.')[0] "
            "in ('keras', 'tensorflow') or m in ('kaggle_kit.ports', 'kaggle_kit.heads', 'kaggle_kit.backbones')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_keras_is_imported_only_by_the_keras_loader():
    importers = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in ("keras", "tensorflow") for n in names):
                importers.append(path.name)
    assert importers == ["keras_loader.py"]
