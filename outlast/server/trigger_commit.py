"""Group commit of HTTP triggers: the triggers of concurrent requests in one transaction.

Every trigger endpoint (one run, a batch of one task, a batch of several, the Trigger.dev
SDK's streamed batches) validates its request on its own, then queues the runs to the
process's ``TriggerCommitter`` and waits. The committer's thread takes everything queued
(up to ``OUTLAST_TRIGGER_GROUP_MAX_RUNS`` runs; a request is never split), writes it in
one transaction (``Store.trigger_group``), and only then answers each request: a 2xx
always follows its own commit (C1). While one group commits the next one gathers, so
under load a commit's cost is shared by every request in it, and alone a request waits
for no one.

A group the database refuses on its data (an integrity or data error) is split in halves,
and so on down to the requests at fault, which get the error they would have got alone;
the others commit. A deadlock or serialization failure (another server's group locking the
same keys in another order) is retried. Any other error (the database unreachable) fails
every request of the group with it, as each would have failed alone: nothing was written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._config import settings
from ..store.base import ApiStore, NewRun, TriggerRequest, TriggerResult

log = logging.getLogger("outlast.server")

# SQLSTATEs of a transaction the database chose to abort though its data is fine.
_RETRIED = {"40001", "40P01"}
_ATTEMPTS = 5

_COMMITTERS: weakref.WeakKeyDictionary[Any, TriggerCommitter] = weakref.WeakKeyDictionary()
_COMMITTERS_LOCK = threading.Lock()


@dataclass
class _Item:
    request: TriggerRequest
    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future[TriggerRequest] | concurrent.futures.Future[TriggerRequest]


class TriggerCommitter:
    """One per store (``TriggerCommitter.of(store)``): a thread that commits queued trigger
    requests in groups. The thread starts with the first request and leaves after
    ``idle`` seconds without one (a test's app leaves no thread behind)."""

    def __init__(self, store: ApiStore, *, max_runs: int | None = None,
                 idle: float = 2.0) -> None:
        self.store = store
        self.max_runs = max_runs if max_runs is not None else settings().trigger_group_max_runs
        self.idle = idle
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.groups = 0  # transactions committed (tests and benchmarks read these)
        self.requests = 0

    @classmethod
    def of(cls, store: ApiStore) -> TriggerCommitter:
        """The committer of ``store``: one per store, so one per process."""
        with _COMMITTERS_LOCK:
            committer = _COMMITTERS.get(store)
            if committer is None:
                committer = _COMMITTERS[store] = cls(store)
            return committer

    async def trigger(self, env: str, runs: list[NewRun], request_key: str | None
                      ) -> tuple[list[TriggerResult], bool]:
        """Queue one request's runs and wait until they committed: its results, and
        whether ``request_key`` was seen before (then the results are the first
        request's). Raises what the database raised for this request."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[TriggerRequest] = loop.create_future()
        self._put(_Item(TriggerRequest(env, runs, request_key), loop, future))
        done = await future
        return done.results, done.cached

    def trigger_blocking(self, env: str, runs: list[NewRun], request_key: str | None
                         ) -> tuple[list[TriggerResult], bool]:
        """``trigger`` for a caller in a thread (a sync endpoint)."""
        future: concurrent.futures.Future[TriggerRequest] = concurrent.futures.Future()
        self._put(_Item(TriggerRequest(env, runs, request_key), None, future))
        done = future.result()
        return done.results, done.cached

    def _put(self, item: _Item) -> None:
        self._queue.put(item)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="outlast-trigger-commit")
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self.idle)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            group = [first]
            size = len(first.request.runs)
            while size < self.max_runs:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                group.append(item)
                size += len(item.request.runs)
            try:
                errors = self._write(group)
            except BaseException as exc:  # pragma: no cover - a bug of ours: answer, go on
                log.exception("trigger group commit failed")
                errors = [exc] * len(group)
            _answer(group, errors)

    def _write(self, group: Sequence[_Item]) -> list[BaseException | None]:
        """Commit ``group``; per item, None (committed) or the error that item gets."""
        try:
            self._commit(group)
            return [None] * len(group)
        except Exception as exc:
            if len(group) == 1 or not self.store.refused_data(exc):
                return [exc] * len(group)
            log.warning("the database refused a group of %d trigger requests (%s); "
                        "finding the ones at fault", len(group), exc)
        half = len(group) // 2
        return self._write(group[:half]) + self._write(group[half:])

    def _commit(self, group: Sequence[_Item]) -> None:
        requests = [item.request for item in group]
        for attempt in range(_ATTEMPTS):
            try:
                self.store.trigger_group(requests)
                break
            except Exception as exc:
                if getattr(exc, "sqlstate", None) not in _RETRIED or attempt == _ATTEMPTS - 1:
                    raise
                log.info("trigger group aborted by the database (%s); retrying", exc)
        self.groups += 1
        self.requests += len(group)


def _answer(group: Sequence[_Item], errors: Sequence[BaseException | None]) -> None:
    """Hand each item its outcome: on its own loop (one wake-up per loop), or directly
    to a blocking caller."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, BaseException | None]]] = {}
    for item, error in zip(group, errors, strict=True):
        if item.loop is None:
            fut = item.future
            assert isinstance(fut, concurrent.futures.Future)
            if error is None:
                fut.set_result(item.request)
            else:
                fut.set_exception(error)
        else:
            by_loop.setdefault(item.loop, []).append((item, error))
    for loop, outcomes in by_loop.items():
        # RuntimeError: the loop closed, nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, outcomes)


def _settle(outcomes: list[tuple[_Item, BaseException | None]]) -> None:
    for item, error in outcomes:
        fut = item.future
        if fut.done():  # the request went away (its client disconnected)
            continue
        if error is None:
            fut.set_result(item.request)
        else:
            fut.set_exception(error)
