"""The rules of ARCHITECTURE.md, checked on the source: the layering of the packages, no import
cycle between packages or files (imports inside functions and under TYPE_CHECKING counted),
the run directory's file names in one package only, no global matplotlib backend."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from cxrfuse.rundir import layout

SRC = Path(__file__).resolve().parents[1] / "src" / "cxrfuse"

LAYERS: list[set[str]] = [
    {"problems", "vocab"},
    {"files", "runtime", "plotting"},
    {"data"},
    {"text", "stats"},
    {"config"},
    {"encoders"},
    {"store", "fusion"},
    {"rundir"},
    {"inference"},
    {"training"},
    {"evaluation"},
    {"explain"},
    {"clip"},
    {"generation"},
    {"interop"},
    {"reporting"},
    {"serve"},
    {"demo"},
    {"cli"},
]
"""A package may import packages of earlier layers only (and itself)."""
FORBIDDEN = {"generation": ("cxrfuse.training",), "serve": ("cxrfuse.training",),
             "interop": ("cxrfuse.training",)}
"""Stages that must not reach into another stage's internals."""


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """cxrfuse modules ``module`` imports anywhere in its file (resolved to real modules)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                     for a in node.names]  # fmt: skip
        for name in names:
            while name not in MODULES and "." in name:
                name = name.rsplit(".", 1)[0]
            if name.startswith("cxrfuse") and name in MODULES and name != module:
                found.add(name)
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cxrfuse"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_files() -> None:
    files = {m: {t for t in ts if MODULES[t].name != "__init__.py"} for m, ts in GRAPH.items()}
    assert _cycles(files) == []


def test_no_import_cycle_between_packages() -> None:
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in GRAPH.items():
        for target in targets:
            if _package(module) != _package(target):
                packages[_package(module)].add(_package(target))
    assert _cycles(packages) == []


def test_packages_import_only_earlier_layers() -> None:
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    top = {_package(m) for m in MODULES} - {"cxrfuse"}
    assert top <= set(rank), f"packages missing from LAYERS: {sorted(top - set(rank))}"
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if _package(module) != _package(target) and _package(module) in rank
        and rank[_package(target)] >= rank[_package(module)]
    )  # fmt: skip
    assert wrong == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_stages_do_not_import_training_internals(package: str) -> None:
    wrong = sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if _package(m) == package
                   for t in ts if t.startswith(FORBIDDEN[package]))  # fmt: skip
    assert wrong == []


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """String literals of a file except docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and (body := node.body) and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
    }  # fmt: skip
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def _path_parts(path: Path) -> list[tuple[int, str]]:
    """String literals joined onto a path (``x / "name"``)."""
    return [(n.lineno, n.right.value) for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)
            and isinstance(n.right, ast.Constant) and isinstance(n.right.value, str)]  # fmt: skip


def test_run_directory_file_names_live_in_rundir_only() -> None:
    values = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)}
    files = {v for v in values if "." in v} | set(layout.RUN_PLOTS)
    folders = values - files - {layout.RUNS}  # "runs" is also every runs_dir's default name
    found = sorted({
        f"{path.relative_to(SRC)}:{line}: {value!r}"
        for module, path in MODULES.items()
        if _package(module) != "rundir"
        for line, value in _string_constants(path) + _path_parts(path)
        if value in files or any(value.endswith("/" + n) for n in files)
        or (value in folders and (line, value) in _path_parts(path))
    })
    assert found == []


def test_no_module_sets_the_matplotlib_backend() -> None:
    found = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr == "use" and ast.unparse(node.func.value) == "matplotlib":  # fmt: skip
                found.append(f"{module}:{node.lineno}")
    assert found == []
