"""The claim loop's wake-ups, read on the event loop.

Between claims an idle worker waits for work. Where the store has a file descriptor for
its wake-ups (PostgreSQL's LISTEN connection, SQLite's datagram socket), the loop watches
it (``add_reader``): a notification wakes the loop itself. A thread blocked in
``wait_for_work`` woke first and then had to wake the loop, a second wake-up of a sleeping
thread on every trigger's path to its start (bench/README.md, start latency). Without a
descriptor (behind a pooler with no direct URL, the database away), a thread waits in
``wait_for_work`` as before, and the descriptor is asked for again a while later.
Wake-ups only hurry the claim loop: a lost one costs a poll interval, never a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from .store.base import StoreBase

_RETRY_SECONDS = 5.0  # after the store had no descriptor to give, before asking again


class Wakeups:
    def __init__(self, store: StoreBase) -> None:
        self.store = store
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken = asyncio.Event()
        self._retry_at = 0.0
        self._closed = False

    @property
    def watching(self) -> bool:
        """Whether the loop watches the store's descriptor (no thread waits)."""
        return self._fd is not None

    async def wait(self, timeout: float) -> None:
        """Return when new work may be ready, or after ``timeout`` seconds. A wake-up
        that came while nobody waited returns the next wait at once."""
        if not self._closed and (self._fd is not None or await self._watch()):
            if not self._woken.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), timeout)
            self._woken.clear()
        elif self._closed:  # the worker is shutting down: nothing to watch any more
            await asyncio.sleep(timeout)
        else:
            await asyncio.to_thread(self.store.wait_for_work, timeout)

    async def _watch(self) -> bool:
        if time.monotonic() < self._retry_at:
            return False
        fd = await asyncio.to_thread(self.store.wakeup_fd)  # may connect: off the loop
        if self._closed:
            return False
        if fd is None:
            self._retry_at = time.monotonic() + _RETRY_SECONDS
            return False
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._readable)
        self._fd = fd
        return True

    def _readable(self) -> None:
        if not self.store.drain_wakeups():
            self._unwatch()  # lost: the next wait asks the store for a new one
        self._woken.set()  # and claims meanwhile: the loss may have hidden a wake-up

    def close(self) -> None:
        """Stop watching (before the store closes the descriptor), and let a wait on the
        loop return."""
        self._closed = True
        self._unwatch()
        self._woken.set()

    def _unwatch(self) -> None:
        if self._fd is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._fd = None
