"""Time as a parameter: every timestamp the platform writes comes from a Clock.

Timestamps are UNIX epoch seconds as floats, in both backends. The PostgreSQL store
judges leases by the database's clock (``DatabaseClock`` in ``store/postgres.py``), so a
worker whose host clock is skewed neither steals live leases nor delays due runs.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told to. Thread-safe."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, value: float) -> None:
        with self._lock:
            self._now = value
