#!/usr/bin/env python3
"""The import graph of ``outlast/``, counting imports inside functions, and its cycles.

A function-level import runs too, only later: ``client`` importing ``tasks`` at the top
and ``tasks`` importing ``client`` inside a method is a cycle all the same, hidden from
the interpreter's import order but not from a reader. Imports under ``if TYPE_CHECKING:``
never run and do not count.

    scripts/import_cycles.py            # the cycles (strongly connected modules)
    scripts/import_cycles.py --edges    # and the function-level imports inside them
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "outlast"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, in_function: bool, out: list[tuple[ast.AST, bool]]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:
                _walk(sub, in_function, out)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            out.append((child, in_function))
        nested = in_function or isinstance(
            child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
        )
        _walk(child, nested, out)


def imports(path: Path, modules: set[str]) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function?, line) for each import of a package module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[ast.AST, bool]] = []
    _walk(ast.parse(path.read_text(), str(path)), False, found)
    out: list[tuple[str, bool, int]] = []
    for node, in_function in found:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)
        for target in targets:
            if target in modules and target != name:
                out.append((target, in_function, getattr(node, "lineno", 0)))
    return out


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; the components of more than one module, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(components, key=len, reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true",
                        help="list the function-level imports inside each cycle")
    args = parser.parse_args()
    files = sorted((ROOT / PACKAGE).rglob("*.py"))
    modules = {module_name(f) for f in files}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    late: list[tuple[str, str, int]] = []
    for f in files:
        src = module_name(f)
        for target, in_function, line in imports(f, modules):
            graph[src].add(target)
            if in_function:
                late.append((src, target, line))
    cycles = strongly_connected(graph)
    print(f"{len(modules)} modules, {len(late)} function-level imports of package modules")
    if not cycles:
        print("no import cycle")
    for component in cycles:
        members = set(component)
        inside = [(s, t, n) for s, t, n in late if s in members and t in members]
        print(f"cycle of {len(component)} modules ({len(inside)} function-level imports "
              f"inside it): {', '.join(component)}")
        if args.edges:
            for s, t, n in inside:
                print(f"    {s}:{n} -> {t}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
