"""The worker's heartbeat, on a thread of its own.

A worker's lease must not depend on its event loop: task code that blocks the loop (a
sync call in an async task, a CPU-bound loop) for longer than the lease would otherwise
let peers reap runs that are still executing. So the lease is renewed here, from a
dedicated thread (not the default executor, whose threads sync tasks may all hold), and
each beat's result is handed to the loop thread-safely. Each beat also checks the life
lock: on PostgreSQL the session holding the advisory lock can die (a database restart,
``pg_terminate_backend``, a cut connection) while the worker's row still says alive.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .store.base import Heartbeat, LifeLock, WorkerStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Beat:
    """One beat's result for ``worker_id``. ``heartbeat`` is None when the database could
    not be reached (the lease may still be current; the next beat tells)."""

    worker_id: str
    heartbeat: Heartbeat | None
    lock_lost: bool = False

    @property
    def lost(self) -> bool:
        """The worker no longer holds its identity: nothing under it may commit (C4)."""
        return self.lock_lost or (self.heartbeat is not None and not self.heartbeat.alive)


def beat_once(
    store: WorkerStore, worker_id: str, lock: LifeLock | None, lease_seconds: float
) -> Beat:
    """Check the life lock, then renew the lease; blocking (call it off the loop). A lost
    lock renews nothing: the identity is over, and its runs are to be reaped."""
    if lock is not None and not lock.alive():
        return Beat(worker_id, None, lock_lost=True)
    try:
        return Beat(worker_id, store.heartbeat(worker_id, lease_seconds))
    except Exception as exc:
        log.warning("heartbeat of worker %s failed: %s", worker_id, exc)
        return Beat(worker_id, None)


class HeartbeatThread:
    """Beats every ``interval`` seconds for the identity it serves and calls ``on_beat``
    on ``loop`` with each result. After a lost beat it beats no more until the worker
    serves it a new identity (``serve``)."""

    def __init__(
        self,
        store: WorkerStore,
        loop: asyncio.AbstractEventLoop,
        on_beat: Callable[[Beat], None],
        *,
        lease_seconds: float,
        interval: float,
    ) -> None:
        self.store = store
        self.loop = loop
        self.on_beat = on_beat
        self.lease_seconds = lease_seconds
        self.interval = interval
        self._mu = threading.Lock()
        self._identity: tuple[str, LifeLock | None] | None = None
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outlast-heartbeat", daemon=True)

    def start(self, worker_id: str, lock: LifeLock | None) -> None:
        self._identity = (worker_id, lock)
        self._thread.start()

    def serve(self, worker_id: str, lock: LifeLock | None) -> None:
        """Beat for a new identity from now on, starting at once."""
        with self._mu:
            self._identity = (worker_id, lock)
        self._kick.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop beating; blocks until the thread is done (or ``timeout``)."""
        self._stop.set()
        self._kick.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._mu:
                identity = self._identity
            if identity is not None:
                beat = beat_once(self.store, *identity, self.lease_seconds)
                with self._mu:
                    if beat.lost and self._identity == identity:
                        self._identity = None  # told once; the worker serves a new one
                    current = self._identity in (identity, None)
                if current and not self._stop.is_set():
                    try:
                        self.loop.call_soon_threadsafe(self.on_beat, beat)
                    except RuntimeError:  # the loop closed under a worker not shut down
                        return
            self._kick.wait(self.interval)
            self._kick.clear()
