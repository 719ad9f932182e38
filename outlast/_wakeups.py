"""The claim loop's wake-ups, read on the event loop.

Between claims an idle worker waits for work. Where the store has a file descriptor for
its wake-ups (PostgreSQL's LISTEN connection, SQLite's datagram socket), the loop watches
it (``add_reader``): a notification wakes the loop itself. A thread blocked in
``wait_for_work`` woke first and then had to wake the loop, a second wake-up of a sleeping
thread on every trigger's path to its start (bench/README.md, start latency). Without a
descriptor (behind a pooler with no direct URL, the database away), a thread waits in
``wait_for_work`` as before, and the descriptor is asked for again a while later.
Wake-ups only hurry the claim loop: a lost one costs a poll interval, never a run.

Workers sharing one store object (tests, an app embedding two) share its descriptor: one
watch per store and loop (``_Watch``), which wakes every worker waiting on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Callable, Sequence

from .store.base import Handover, StoreBase

_RETRY_SECONDS = 5.0  # after the store had no descriptor to give, before asking again


class Wakeups:
    """One worker's waits for work, and the runs triggers hand it (``on_handover``: it
    starts those addressed to it; True asks for a claim, which returns the rest)."""

    def __init__(self, store: StoreBase,
                 on_handover: Callable[[Sequence[Handover]], bool] | None = None) -> None:
        self.store = store
        self.on_handover = on_handover
        self._woken = asyncio.Event()
        self._watch: _Watch | None = None
        self._closed = False

    @property
    def watching(self) -> bool:
        """Whether the loop watches the store's descriptor for this worker."""
        return self._watch is not None and self._watch.fd is not None

    async def wait(self, timeout: float) -> None:
        """Return when new work may be ready, or after ``timeout`` seconds. A wake-up
        that came while nobody waited returns the next wait at once."""
        if self._closed:  # the worker is shutting down: nothing to watch any more
            await asyncio.sleep(timeout)
            return
        self._watch = _Watch.of(self.store)
        if not await self._watch.join(self):
            if not self._closed:
                await asyncio.to_thread(self.store.wait_for_work, timeout)
            return
        if not self._woken.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), timeout)
        self._woken.clear()

    def close(self) -> None:
        """Stop watching (before the store closes the descriptor), and let a wait on the
        loop return."""
        self._closed = True
        if self._watch is not None:
            self._watch.leave(self)
        self._woken.set()


class _Watch:
    """The loop's watch on one store's wake-up descriptor, for the workers waiting on it."""

    _of: weakref.WeakKeyDictionary[StoreBase, _Watch] = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self.fd: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.members: set[Wakeups] = set()
        self.retry_at = 0.0
        self.asking: asyncio.Lock | None = None

    @classmethod
    def of(cls, store: StoreBase) -> _Watch:
        watch = cls._of.get(store)
        loop = asyncio.get_running_loop()
        if watch is None or (watch.loop is not None and watch.loop is not loop):
            if watch is not None:
                watch.unwatch()  # a store used from another loop now
            watch = cls._of[store] = cls()
        return watch

    async def join(self, member: Wakeups) -> bool:
        """Watch the descriptor of ``member``'s store for it; False if there is none now.
        (The store is not held here: this is the value of a weak mapping keyed by it.)"""
        store = member.store
        self.members.add(member)
        if self.fd is not None:
            return True
        if time.monotonic() < self.retry_at:
            return False
        self.asking = self.asking or asyncio.Lock()
        async with self.asking:  # one connection, however many workers ask at once
            if self.fd is None and time.monotonic() >= self.retry_at:
                fd = await asyncio.to_thread(store.wakeup_fd)  # may connect: off the loop
                if fd is None:
                    self.retry_at = time.monotonic() + _RETRY_SECONDS
                elif self.members:  # all may have left while it connected
                    self.loop = asyncio.get_running_loop()
                    self.loop.add_reader(fd, self._readable, store)
                    self.fd = fd
        return self.fd is not None and member in self.members

    def leave(self, member: Wakeups) -> None:
        self.members.discard(member)
        if not self.members:
            self.unwatch()

    def _readable(self, store: StoreBase) -> None:
        ok = store.drain_wakeups()
        if not ok:
            self.unwatch()  # lost: the next wait asks the store for a new one
        handovers, plain = store.take_handovers()
        for member in list(self.members):  # each claims: a loss may hide a wake-up
            claim = bool(handovers) and member.on_handover is not None and \
                member.on_handover(handovers)
            # A hand-over alone wakes nobody: its run was started above, and a claim
            # would find nothing to take.
            if plain or claim or not ok:
                member._woken.set()

    def unwatch(self) -> None:
        if self.fd is not None and self.loop is not None and not self.loop.is_closed():
            with contextlib.suppress(OSError, ValueError):  # the store closed it first
                self.loop.remove_reader(self.fd)
        self.fd = None
