"""The client's database transport: its calls straight on the store the app shares.

``StoreTransport`` is ``Client``'s; ``AsyncStoreTransport`` is ``AsyncClient``'s, on the
same store. A trigger is validated and built by ``_trigger`` (the task's code when it is
imported here, else the definition its workers published) and committed before the call
returns (C1).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from . import _app_tx, _bulk, _schedule_crud, _serde
from ._errors import RunNotFound, TokenNotFound
from ._events_client import AsyncStoreEvents, StoreEvents
from ._ids import new_id
from ._trigger import TriggerOptions, prepare_replay, prepare_run, prepare_runs
from .runs import Run
from .store._bulk_base import BulkAction, BulkFilter
from .store.base import Schedule, Store, Waitpoint
from .waitpoints import Token, callback_url

if TYPE_CHECKING:
    from ._transport import Triggered
    from .tasks import Task

P = ParamSpec("P")
R = TypeVar("R")


class StoreTransport(StoreEvents):
    """``Transport`` over a store: each call is one or two store calls, in this thread."""

    def __init__(self, store: Store, env: str) -> None:
        self._store = store
        self.env = env
        self._checked = False

    @property
    def store(self) -> Store:
        return self._store

    def check(self) -> None:
        if not self._checked:
            self._store.check_schema()
            self._checked = True

    def _ready(self) -> Store:
        if not self._checked:
            self.check()
        return self._store

    def asynchronous(self) -> AsyncStoreTransport:
        return AsyncStoreTransport(self)

    def close(self) -> None:
        self._store.close()

    # -- runs -------------------------------------------------------------------------------
    def trigger(self, task: Task[Any, Any] | str, payload: Any,
                options: TriggerOptions) -> Triggered:
        store = self._ready()
        result = store.trigger([prepare_run(store, self.env, task, payload, options)])[0]
        return result.id, result.is_cached

    def trigger_in(self, task: Task[Any, Any] | str, payload: Any, options: TriggerOptions,
                   connection: Any) -> Triggered:
        return _app_tx.trigger_in(self._ready(), self.env, task, payload, options, connection)

    def batch_trigger(self, task: Task[Any, Any] | str, payloads: Iterable[Any],
                      options: TriggerOptions) -> list[Triggered]:
        store = self._ready()
        runs = prepare_runs(store, self.env, task, payloads, options)
        return [(r.id, r.is_cached) for r in store.trigger(runs)]

    def retrieve(self, run_id: str) -> Run:
        run = self._ready().get_run(self.env, run_id)
        if run is None:
            raise RunNotFound(f"no run {run_id!r} in environment {self.env!r}", field="run_id")
        return run

    def list_runs(self, **filters: Any) -> list[Run]:
        return self._ready().list_runs(self.env, **filters)

    def cancel(self, run_id: str) -> Run:
        run, _ = self._ready().cancel(self.env, run_id)
        return run

    def replay(self, run_id: str, payload: Any, has_payload: bool) -> tuple[str, str]:
        original = self.retrieve(run_id)
        store = self._ready()
        new = prepare_replay(store, self.env, original,
                             payload if has_payload else original.payload)
        return store.trigger([new])[0].id, new.task_id

    # -- waitpoint tokens -------------------------------------------------------------------
    def create_token(self, timeout: float | None, idempotency_key: str | None,
                     idempotency_ttl: float | None, tags: Sequence[str]) -> Token:
        store = self._ready()
        wp = store.create_token(
            self.env,
            new_id("waitpoint"),
            timeout_at=store.now() + timeout if timeout is not None else None,
            idempotency_key=idempotency_key,
            idempotency_ttl=idempotency_ttl,
            tags=tags,
        )
        return Token(id=wp.id, callback_url=callback_url(store, wp.id), timeout_at=wp.timeout_at)

    def complete_token(self, token_id: str, data: Any) -> Waitpoint:
        wp, _ = self._ready().complete_waitpoint(self.env, token_id, _serde.to_json(data))
        return wp

    def get_token(self, token_id: str) -> Waitpoint:
        wp = self._ready().get_waitpoint(self.env, token_id)
        if wp is None:
            raise TokenNotFound(f"no waitpoint token {token_id!r}", field="id")
        return wp

    def list_tokens(self, status: str | None, limit: int) -> list[Waitpoint]:
        waitpoints = self._ready().list_waitpoints(self.env, status=status, limit=limit)
        return [w for w in waitpoints if w.kind == "token"]

    # -- queues -----------------------------------------------------------------------------
    def list_queues(self) -> list[dict[str, Any]]:
        return [dict(q) for q in self._ready().list_queues(self.env)]

    def pause_queue(self, name: str, paused: bool) -> dict[str, Any]:
        return dict(self._ready().update_queue(self.env, name, paused=paused))

    def set_queue_limit(self, name: str, limit: int | None) -> dict[str, Any]:
        return dict(self._ready().update_queue(self.env, name, concurrency_limit=limit))

    # -- schedules --------------------------------------------------------------------------
    def create_schedule(self, task: Task[Any, Any] | str, cron: str, timezone: str | None,
                        external_id: str | None, deduplication_key: str | None) -> Schedule:
        return _schedule_crud.create(
            self._ready(), self.env, task=task, cron=cron, timezone=timezone,
            external_id=external_id, deduplication_key=deduplication_key,
        )[0]

    def retrieve_schedule(self, schedule_id: str) -> Schedule:
        return _schedule_crud.get(self._ready(), self.env, schedule_id)

    def list_schedules(self, task_id: str | None, external_id: str | None, type: str | None,
                       active: bool | None, page: int, per_page: int) -> list[Schedule]:
        rows, _ = self._ready().list_schedules(
            self.env, task_id=task_id, external_id=external_id, type=type, active=active,
            limit=per_page, offset=(max(page, 1) - 1) * per_page,
        )
        return rows

    def update_schedule(self, schedule_id: str, task: Task[Any, Any] | str | None,
                        cron: str | None, timezone: str | None, external_id: str | None
                        ) -> Schedule:
        return _schedule_crud.update(self._ready(), self.env, schedule_id, task=task, cron=cron,
                                     timezone=timezone, external_id=external_id)

    def set_schedule_active(self, schedule_id: str, active: bool) -> Schedule:
        return _schedule_crud.set_active(self._ready(), self.env, schedule_id, active)

    def delete_schedule(self, schedule_id: str) -> Schedule:
        return _schedule_crud.delete(self._ready(), self.env, schedule_id)

    # -- bulk actions -----------------------------------------------------------------------
    def bulk_count(self, action: str, f: BulkFilter) -> int:
        return _bulk.count(self._ready(), self.env, f)

    def start_bulk(self, action: str, f: BulkFilter) -> BulkAction:
        return _bulk.start(self._ready(), self.env, action, f)

    def run_bulk(self, bulk_id: str, size: int,
                 on_progress: _bulk.Progress | None) -> BulkAction:
        return _bulk.run(self._ready(), self.env, bulk_id, size=size, on_progress=on_progress)

    def get_bulk(self, bulk_id: str) -> BulkAction:
        return _bulk.get(self._ready(), self.env, bulk_id)

    def list_bulk(self, limit: int) -> list[BulkAction]:
        return self._ready().list_bulk_actions(self.env, limit)

    def abort_bulk(self, bulk_id: str) -> BulkAction:
        return _bulk.abort(self._ready(), self.env, bulk_id)


class AsyncStoreTransport(AsyncStoreEvents):
    """``AsyncTransport`` over a store: each call is ``StoreTransport``'s in a worker
    thread. The store's drivers (sqlite3, psycopg's pool) block, and it has no async path;
    one hop per call (not per store call, nor around the client) keeps the loop free while
    the database answers, and the client's own work (options, handles, waiting) on it."""

    def __init__(self, sync: StoreTransport) -> None:
        self.sync = sync

    @staticmethod
    async def _off_loop(call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(call, *args, **kwargs)

    async def close(self) -> None:
        """Nothing of its own: the store is the sync transport's, closed with it."""

    async def trigger(self, task: Task[Any, Any] | str, payload: Any,
                      options: TriggerOptions) -> Triggered:
        return await self._off_loop(self.sync.trigger, task, payload, options)

    async def trigger_in(self, task: Task[Any, Any] | str, payload: Any,
                         options: TriggerOptions, connection: Any) -> Triggered:
        return await self._off_loop(self.sync.trigger_in, task, payload, options, connection)

    async def batch_trigger(self, task: Task[Any, Any] | str, payloads: Iterable[Any],
                            options: TriggerOptions) -> list[Triggered]:
        return await self._off_loop(self.sync.batch_trigger, task, payloads, options)

    async def retrieve(self, run_id: str) -> Run:
        return await self._off_loop(self.sync.retrieve, run_id)

    async def list_runs(self, **filters: Any) -> list[Run]:
        return await self._off_loop(self.sync.list_runs, **filters)

    async def cancel(self, run_id: str) -> Run:
        return await self._off_loop(self.sync.cancel, run_id)

    async def replay(self, run_id: str, payload: Any, has_payload: bool) -> tuple[str, str]:
        return await self._off_loop(self.sync.replay, run_id, payload, has_payload)

    async def create_token(self, timeout: float | None, idempotency_key: str | None,
                           idempotency_ttl: float | None, tags: Sequence[str]) -> Token:
        return await self._off_loop(self.sync.create_token, timeout, idempotency_key,
                                    idempotency_ttl, tags)

    async def complete_token(self, token_id: str, data: Any) -> Waitpoint:
        return await self._off_loop(self.sync.complete_token, token_id, data)

    async def get_token(self, token_id: str) -> Waitpoint:
        return await self._off_loop(self.sync.get_token, token_id)

    async def list_tokens(self, status: str | None, limit: int) -> list[Waitpoint]:
        return await self._off_loop(self.sync.list_tokens, status, limit)

    async def list_queues(self) -> list[dict[str, Any]]:
        return await self._off_loop(self.sync.list_queues)

    async def pause_queue(self, name: str, paused: bool) -> dict[str, Any]:
        return await self._off_loop(self.sync.pause_queue, name, paused)

    async def set_queue_limit(self, name: str, limit: int | None) -> dict[str, Any]:
        return await self._off_loop(self.sync.set_queue_limit, name, limit)
