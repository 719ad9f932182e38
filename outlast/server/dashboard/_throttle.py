"""Login throttling: wrong dashboard passwords are limited per client address.

A token bucket per address: ``BURST`` wrong passwords at once, then one more every
``EVERY`` seconds. Over that, a login attempt is answered 429 with ``Retry-After`` at once
and the password is not checked. Nothing sleeps: a wrong password used to sleep half a
second in the shared thread pool, and a flood of them starved every other request.

Kept in this process's memory (a flood is refused where it lands; several servers each
allow their own burst), and bounded: past ``MAX_ADDRESSES`` the addresses whose bucket is
full again are forgotten, then the oldest.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

BURST = 10
EVERY = 3.0
MAX_ADDRESSES = 10_000


class LoginThrottle:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)
        self._lock = threading.Lock()

    def _tokens(self, address: str, now: float) -> float:
        tokens, at = self._buckets.get(address, (BURST, now))
        return min(float(BURST), tokens + (now - at) / EVERY)

    def wait(self, address: str) -> int:
        """Seconds until ``address`` may try a password again; 0: now."""
        now = self._clock()
        with self._lock:
            tokens = self._tokens(address, now)
        return 0 if tokens >= 1 else max(1, math.ceil((1 - tokens) * EVERY))

    def failed(self, address: str) -> None:
        """Count a wrong password from ``address``."""
        now = self._clock()
        with self._lock:
            tokens = self._tokens(address, now)
            self._buckets.pop(address, None)  # re-inserted last: the dict stays oldest first
            self._buckets[address] = (max(0.0, tokens - 1), now)
            if len(self._buckets) > MAX_ADDRESSES:
                self._forget(now)

    def _forget(self, now: float) -> None:
        for address in [a for a in self._buckets if self._tokens(a, now) >= BURST]:
            del self._buckets[address]
        while len(self._buckets) > MAX_ADDRESSES:
            del self._buckets[next(iter(self._buckets))]
