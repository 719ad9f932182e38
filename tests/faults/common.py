"""Reading what a fault test's workers did: runs, the ledger of step bodies, repeats."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..test_crash import read_ledger
from .harness import FaultFleet

T = TypeVar("T")


def wait_until(what: str, cond: Callable[[], T | None], timeout: float, fleet: FaultFleet) -> T:
    """Poll ``cond`` until it returns something true; errors (a database away) count as
    not yet. Supervises the fleet meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = cond()
        except Exception:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{fleet.tails()}")
        fleet.supervise()
        time.sleep(0.05)


def all_final(fleet: FaultFleet, ids: list[str]) -> Callable[[], bool]:
    return lambda: all(r.status.is_final for r in fleet.store.get_runs("dev", ids))


def begins(ledger: Path) -> Counter[tuple[str, str]]:
    """(run, step) -> how many times its body began."""
    return Counter((e["run"], e["step"]) for e in read_ledger(ledger) if e["ev"] == "begin")


def first_begin(ledger: Path) -> dict[tuple[str, str], float]:
    first: dict[tuple[str, str], float] = {}
    for e in read_ledger(ledger):
        if e["ev"] == "begin":
            first.setdefault((e["run"], e["step"]), e["t"])
    return first
