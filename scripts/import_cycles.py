#!/usr/bin/env python3
"""Print the import graph's cycles in ``outlast/``, counting imports inside functions.

A function-level import runs too, only later: ``client`` importing ``tasks`` at the top
and ``tasks`` importing ``client`` inside a method is a cycle all the same. Imports under
``if TYPE_CHECKING:`` never run and do not count. The graph is read by the same code that
tests/test_package_shape.py checks it with (no cycle may run through ``store/``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_package_shape import _cycles, import_graph


def main() -> int:
    graph = import_graph()
    cycles = _cycles(graph)
    print(f"{len(graph)} modules, {len(cycles)} import cycles")
    for cycle in sorted(cycles, key=len, reverse=True):
        print(f"cycle of {len(cycle)} modules: {', '.join(sorted(cycle))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
