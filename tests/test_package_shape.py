"""The package's shape: its import graph and the size of its modules, classes and functions.

The import graph counts every import that runs, at module top level or inside a function
(an import inside a function is a dependency all the same, only a later one); imports
under ``if TYPE_CHECKING:`` never run and are not counted. Two rules keep the store a
layer a reader can take on its own:

- nothing under ``outlast/store/`` imports a module above it. Below the store are the
  pure data and utility modules that import nothing of outlast's above them: ``runs``
  (runs, statuses, journal entries as data), ``_serde``, ``_errors``, ``_clock`` and
  ``_ids``;
- no import cycle runs through ``outlast/store/``.

Sizes (STYLE.md, COMMON.md): no module over 600 lines, no class over 400, no function body
(after its docstring) over 60 lines unless a comment at the ``def`` (in the three lines
above it, or its body's first line) says ``over 60 lines`` and why.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "outlast"

BELOW_THE_STORE = frozenset(
    {"outlast.runs", "outlast._serde", "outlast._errors", "outlast._clock", "outlast._ids"}
)
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 60
_WHY_LONG = re.compile(r"#.*\bover 60 lines\b", re.IGNORECASE)

# Owned by the store/client seams work; emptied at merge. Import edges (importer,
# imported) and sizes ("path" for a module, "path::Class" or "path::function") that break
# the rules above today, in modules other engineers are reshaping.
PENDING: set[str | tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for other in node.orelse:
                yield from _imports(other)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in MODULES}
    if node.level:
        base = module.split(".")
        if path.name != "__init__.py":
            base.pop()
        base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    found = set()
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        found.add(sub if sub in MODULES else target)
    return {t for t in found if t in MODULES}


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text())):
            edges |= _targets(module, path, node)
        graph[module] = {t for t in edges - {module} if (module, t) not in PENDING}
    return graph


def _in_store(module: str) -> bool:
    return module == "outlast.store" or module.startswith("outlast.store.")


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_graph_reader_sees_function_level_imports() -> None:
    # The rules below mean nothing if the reader misses imports inside functions.
    graph = import_graph()
    assert "outlast.client" in graph["outlast.tasks"]  # imported inside Task.trigger
    assert "outlast.store" in graph["outlast.client"]


def test_nothing_under_the_store_imports_a_module_above_it() -> None:
    graph = import_graph()
    above = {
        (module, target)
        for module, targets in graph.items()
        if _in_store(module)
        for target in targets
        if not _in_store(target) and target not in BELOW_THE_STORE
    }
    assert above == set()


def test_the_modules_below_the_store_import_only_each_other() -> None:
    graph = import_graph()
    reaching_up = {
        (module, target)
        for module in BELOW_THE_STORE
        for target in graph[module]
        if target not in BELOW_THE_STORE
    }
    assert reaching_up == set()


def test_no_import_cycle_runs_through_the_store() -> None:
    through = [
        sorted(c) for c in _cycles(import_graph()) if any(_in_store(m) for m in c)
        and not all(_in_store(m) for m in c)
    ]
    assert through == []


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    first = body[0]
    if (
        len(body) > 1
        and isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        first = body[1]  # the docstring does not count
    return (node.end_lineno or node.lineno) - first.lineno + 1


def _says_why_long(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    top = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    around = lines[max(0, top - 4) : top - 1] + lines[node.body[0].lineno - 1 : node.body[0].lineno]
    return any(_WHY_LONG.search(line) for line in around)


def size_offences() -> set[str]:
    offences = set()
    for path in MODULES.values():
        rel = path.relative_to(PACKAGE.parent).as_posix()
        text = path.read_text()
        lines = text.splitlines()
        if len(lines) > MAX_MODULE_LINES:
            offences.add(rel)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                if (node.end_lineno or node.lineno) - node.lineno + 1 > MAX_CLASS_LINES:
                    offences.add(f"{rel}::{node.name}")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                too_long = _body_lines(node) > MAX_FUNCTION_LINES
                if too_long and not _says_why_long(lines, node):
                    offences.add(f"{rel}::{node.name}")
    return offences


def test_modules_classes_and_functions_stay_within_their_sizes() -> None:
    assert size_offences() - {p for p in PENDING if isinstance(p, str)} == set()


def test_pending_lists_only_what_still_breaks_a_rule() -> None:
    # An entry fixed by its owner leaves the list, so the list never hides a new offence.
    sizes = size_offences()
    stale_sizes = {p for p in PENDING if isinstance(p, str) and p not in sizes}
    edges: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges[module] = set()
        for node in _imports(ast.parse(path.read_text())):
            edges[module] |= _targets(module, path, node)
    stale_edges = {p for p in PENDING if isinstance(p, tuple) and p[1] not in edges[p[0]]}
    assert stale_sizes | stale_edges == set()
