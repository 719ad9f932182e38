"""Triggering from Django code: after the commit by default, so a run never starts for
a row that was rolled back, nor before the row it needs is visible to the worker."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from ..._trigger import TriggerOptions, prepare_run
from ...client import Client, _output_type, set_default_client
from ...runs import SyncRunHandle
from ...tasks import Task
from .conf import database_url, options

_lock = threading.Lock()
_client: Client | None = None


def client() -> Client:
    """The project's client (one per process, from settings.OUTLAST), also the default
    client of ``task.trigger()``."""
    global _client
    with _lock:
        if _client is None:
            opts = options()
            _client = Client(
                None if opts["API_URL"] else database_url(opts),
                api_url=opts["API_URL"], secret_key=opts["SECRET_KEY"], env=opts["ENV"],
            )
            set_default_client(_client)
        return _client


def reset_client() -> None:
    """Forget the client (tests that change settings.OUTLAST)."""
    global _client
    with _lock:
        if _client is not None:
            _client.close()
        _client = None
        set_default_client(None)


@dataclass
class PendingRun:
    """A trigger waiting for the transaction's commit. ``id`` is the run's id, unless an
    idempotency key finds an earlier run, which ``handle`` (set at the commit) names."""

    id: str
    task_id: str
    handle: SyncRunHandle[Any] | None = None
    rolled_back: bool = field(default=False)

    @property
    def committed(self) -> bool:
        return self.handle is not None


def trigger(
    task: Task[Any, Any] | str,
    payload: Any = None,
    *,
    mode: str | None = None,
    using: str | None = None,
    **kwargs: Any,
) -> PendingRun:
    """Start a run of ``task`` from Django code, per OUTLAST['TRIGGER'] (or ``mode``):

    - ``on_commit`` (default): validated now (a bad payload raises here), written when
      the current transaction commits, never if it rolls back; at once outside one;
    - ``in_transaction``: written in the transaction itself, through Django's connection
      (PostgreSQL, outlast's tables in the same database): the outbox with no outbox; at
      once outside a transaction;
    - ``now``: written at once, whatever the transaction does later.
    """
    opts = options()
    mode = mode or opts["TRIGGER"]
    alias = using or opts["DATABASE"]
    c = client()
    options_ = TriggerOptions(**kwargs) if kwargs else TriggerOptions()
    if mode == "in_transaction":
        from django.db import connections

        if not connections[alias].in_atomic_block:
            # Autocommit: the write would commit on its own anyway, as "now" does.
            return trigger(task, payload, mode="now", using=alias, **kwargs)
        handle = c.trigger(task, payload, options=options_, connection=connections[alias])
        return PendingRun(id=handle.id, task_id=handle.task_id, handle=handle)
    if mode == "now":
        handle = c.trigger(task, payload, options=options_)
        return PendingRun(id=handle.id, task_id=handle.task_id, handle=handle)
    if c._http is None:
        # Validate and build now: a bad payload is the view's error, not the commit's.
        run = prepare_run(c._ready(), c.env, task, payload, options_)
        pending = PendingRun(id=run.id, task_id=run.task_id)

        def write() -> None:
            result = c.store.trigger([run])[0]
            pending.handle = SyncRunHandle(id=result.id, task_id=run.task_id,
                                           is_cached=result.is_cached, _client=c,
                                           _output_type=_output_type(task))
    else:
        local = task.id if isinstance(task, Task) else str(task)
        pending = PendingRun(id="", task_id=local)

        def write() -> None:
            handle = c.trigger(task, payload, options=options_)
            pending.id = handle.id
            pending.handle = handle

    transaction.on_commit(write, using=alias)
    return pending
