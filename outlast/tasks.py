"""Tasks and queues: ``@task``, ``queue()``, ``Retry``, and the registry workers serve.

A task's payload type is its first parameter's annotation and its result type its return
annotation; both are enforced through pydantic (``_serde``). ``Task.trigger`` goes
through the durable layer inside a run (journaled: a replay never triggers twice) and
through the default client elsewhere.
"""

from __future__ import annotations

import functools
import inspect
import random
import re
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar, overload

from . import _limits, _serde, durable
from ._config import settings
from ._debounce import Batch, Debounce, task_group
from ._errors import ConfigurationError, ValidationError
from ._events import CancelOn, Subscription
from ._trigger import REGISTRY, TriggerOptions, check_payload_size, task_run, task_runs
from .client import default_async_client
from .runs import RunHandle, TaskRunResult
from .store.base import NewRun, QueueSpec, TaskDef

P = TypeVar("P")
R = TypeVar("R")

Hook = Callable[..., Any]


@dataclass(frozen=True)
class Retry:
    """Exponential backoff with jitter: attempt n waits min_delay * factor**(n-1) seconds,
    capped at max_delay, then jittered by ±20% so retries of many runs spread out."""

    max_attempts: int = 3
    factor: float = 2.0
    min_delay: float = 1.0
    max_delay: float = 60.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("Retry.max_attempts must be at least 1", field="max_attempts")
        if self.min_delay < 0 or self.max_delay < self.min_delay or self.factor < 1:
            raise ConfigurationError(
                "Retry needs 0 <= min_delay <= max_delay and factor >= 1", field="retry"
            )

    def delay(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after attempt ``failed_attempt`` (1-based) failed."""
        base = min(self.max_delay, self.min_delay * self.factor ** (failed_attempt - 1))
        if self.jitter:
            base *= (rng or random).uniform(0.8, 1.2)
        return float(min(base, self.max_delay))

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_attempts": self.max_attempts,
            "factor": self.factor,
            "min_delay": self.min_delay,
            "max_delay": self.max_delay,
            "jitter": self.jitter,
        }


@dataclass(frozen=True)
class Queue:
    """A named queue. ``concurrency_limit`` applies per concurrency key when runs carry
    one (and to the whole queue otherwise); ``global_limit`` caps all keys together;
    ``rate_limit=(n, seconds)`` allows n starts per sliding window of that many seconds."""

    name: str
    concurrency_limit: int | None = None
    rate_limit: tuple[int, float] | None = None
    global_limit: int | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][\w.:/-]{0,127}", self.name):
            raise ConfigurationError(f"invalid queue name {self.name!r}", field="queue")
        for name, value in (("concurrency_limit", self.concurrency_limit),
                            ("global_limit", self.global_limit)):
            if value is not None and not (
                isinstance(value, int) and not isinstance(value, bool)
                and 0 <= value <= _limits.MAX_INT
            ):
                raise ConfigurationError(
                    f"{name} must be an integer from 0 to {_limits.MAX_INT}", field=name
                )
        if self.rate_limit is not None:
            n, per = self.rate_limit
            if not 1 <= n <= _limits.MAX_INT or not 0 < per <= _limits.MAX_SECONDS:
                raise ConfigurationError(
                    "rate_limit is (starts, per_seconds) with both positive", field="rate_limit"
                )

    def spec(self) -> QueueSpec:
        return QueueSpec(
            name=self.name,
            concurrency_limit=self.concurrency_limit,
            global_limit=self.global_limit,
            rate_limit=self.rate_limit,
        )


def queue(
    name: str,
    concurrency_limit: int | None = None,
    rate_limit: tuple[int, float] | None = None,
    *,
    global_limit: int | None = None,
) -> Queue:
    return Queue(name, concurrency_limit, rate_limit, global_limit)


def _seconds(value: timedelta | float | int | None, field_name: str) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    return _limits.seconds(seconds, field_name)


def kebab(name: str) -> str:
    name = re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", name)
    return re.sub(r"[_\s]+", "-", name).strip("-").lower()


@dataclass(eq=False)
class Task(Generic[P, R]):
    """A function that outlast runs durably. Create with ``@task``."""

    fn: Callable[[P], Awaitable[R]] | Callable[[P], R]
    id: str
    queue: Queue
    retry: Retry
    max_duration: float | None
    tags: tuple[str, ...]
    payload_type: Any
    return_type: Any
    hooks: dict[str, list[Hook]] = field(default_factory=dict)
    cron: str | None = None
    timezone: str | None = None
    # What events it runs on and is cancelled by (``_events.Subscription``).
    events: Subscription | None = None

    @functools.cached_property
    def is_async(self) -> bool:
        # Cached: asked at every run's start, and inspect's check is not free.
        return inspect.iscoroutinefunction(self.fn)

    # -- building runs --------------------------------------------------------------------
    def validate_payload(self, payload: Any, limit: int | None = None) -> str:
        """Validate and serialize a payload; nothing is written if this raises.

        ``limit`` is the payload size limit in bytes, read from the settings when None (a
        batch reads it once)."""
        value = _serde.validate(payload, self.payload_type, what="payload")
        text = _serde.to_json(value, self.payload_type)
        if limit is None:
            limit = settings().max_payload_bytes
        check_payload_size(text, limit)
        return text

    def new_run(self, payload: Any, options: TriggerOptions, env: str) -> NewRun:
        return task_run(self, payload, options, env)

    def new_runs(self, payloads: Iterable[Any], options: TriggerOptions, env: str) -> list[NewRun]:
        """Runs for many payloads with the same options, each payload validated; a bad one
        raises a ValidationError naming its index (``items[i]``)."""
        return task_runs(self, payloads, options, env)

    def definition(self) -> TaskDef:
        return TaskDef(
            id=self.id,
            queue=self.queue.name,
            payload_schema=_serde.json_schema(self.payload_type),
            spec={
                "retry": self.retry.to_dict(),
                "max_duration": self.max_duration,
                "tags": list(self.tags),
                "cron": self.cron,
                "timezone": self.timezone,
                **({"events": self.events.to_spec()} if self.events else {}),
                "queue": {
                    "concurrency_limit": self.queue.concurrency_limit,
                    "rate_limit": self.queue.rate_limit,
                    "global_limit": self.queue.global_limit,
                },
            },
        )

    # -- triggering -----------------------------------------------------------------------
    async def trigger(
        self,
        payload: P,
        *,
        idempotency_key: str | None = None,
        idempotency_key_ttl: timedelta | float | None = None,
        delay: timedelta | float | None = None,
        ttl: timedelta | float | None = None,
        tags: Sequence[str] = (),
        priority: float = 0.0,
        metadata: dict[str, Any] | None = None,
        max_attempts: int | None = None,
        concurrency_key: str | None = None,
        queue: str | None = None,
        max_duration: timedelta | float | None = None,
        version: str | None = None,
        debounce: Debounce | None = None,
    ) -> RunHandle[R]:
        """Start a run. Inside a task this is journaled: a replay never triggers twice.
        ``version`` locks the run to that task code version (C11); ``debounce`` makes a
        burst of triggers sharing its key one run (``Debounce``)."""
        options = TriggerOptions(
            idempotency_key, idempotency_key_ttl, delay, ttl, tuple(tags), priority,
            metadata, max_attempts, concurrency_key, queue, max_duration, version, debounce,
        )
        if durable.in_run():
            handles = await durable.trigger_children(self, [payload], options, wait=False)
            return handles[0]
        return await default_async_client().trigger(self, payload, options=options)

    async def batch_trigger(
        self, payloads: Iterable[P], **options: Any
    ) -> list[RunHandle[R]]:
        """Start many runs in one transaction (tens of thousands are fine)."""
        opts = TriggerOptions(**options)
        items = list(payloads)
        if durable.in_run():
            return await durable.trigger_children(self, items, opts, wait=False)
        return await default_async_client().batch_trigger(self, items, options=opts)

    async def trigger_and_wait(self, payload: P, **options: Any) -> TaskRunResult[R]:
        """Inside a task: start a child run and wait for it without holding a worker."""
        _no_debounce(options)
        results: list[TaskRunResult[R]] = await durable.wait_for_children(
            self, [payload], TriggerOptions(**options), batch=False
        )
        return results[0]

    async def batch_trigger_and_wait(
        self, payloads: Iterable[P], **options: Any
    ) -> list[TaskRunResult[R]]:
        """Inside a task: start child runs and wait for all; results in input order."""
        _no_debounce(options)
        return await durable.wait_for_children(
            self, list(payloads), TriggerOptions(**options), batch=True
        )

    # -- hooks ----------------------------------------------------------------------------
    def on(self, event: str) -> Callable[[Hook], Hook]:
        """Register a lifecycle hook: start, success, failure, complete, wait, resume, end."""
        if event not in HOOK_EVENTS:
            raise ConfigurationError(f"unknown hook {event!r}; one of {sorted(HOOK_EVENTS)}")

        def register(fn: Hook) -> Hook:
            self.hooks.setdefault(event, []).append(fn)
            return fn

        return register

    def __call__(self, payload: P) -> Awaitable[R] | R:
        """Call the function directly, outside outlast (handy in unit tests)."""
        return self.fn(payload)


def _no_debounce(options: dict[str, Any]) -> None:
    # A debounced run may be another trigger's: it has one parent waiting for it at most.
    if options.get("debounce") is not None:
        raise ValidationError("debounce is for fire-and-forget triggers, not trigger_and_wait",
                              field="debounce")


HOOK_EVENTS = frozenset({"start", "success", "failure", "complete", "wait", "resume", "end"})


def _payload_and_return(fn: Callable[..., Any]) -> tuple[Any, Any]:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    params = list(inspect.signature(fn).parameters.values())
    payload_type: Any = Any
    if params:
        payload_type = hints.get(params[0].name, Any)
    return payload_type, hints.get("return", Any)


@overload
def task(fn: Callable[[P], Awaitable[R]], /) -> Task[P, R]: ...


@overload
def task(fn: Callable[[P], R], /) -> Task[P, R]: ...


@overload
def task(
    *,
    id: str | None = None,
    queue: Queue | str | None = None,
    retry: Retry | None = None,
    max_duration: timedelta | float | None = None,
    tags: Sequence[str] = (),
    cron: str | None = None,
    timezone: str | None = None,
    on: str | Sequence[str] | None = None,
    if_: str | None = None,
    cancel_on: Sequence[CancelOn] = (),
    replay: str = "new",
    debounce: Debounce | None = None,
    batch: Batch | None = None,
    on_start: Hook | None = None,
    on_success: Hook | None = None,
    on_failure: Hook | None = None,
    on_complete: Hook | None = None,
    on_wait: Hook | None = None,
    on_resume: Hook | None = None,
    on_end: Hook | None = None,
) -> Callable[[Callable[[P], Any]], Task[P, Any]]: ...


def task(fn: Any = None, /, **kwargs: Any) -> Any:
    """Declare a task. Options: id, queue, retry, max_duration, tags, cron, timezone,
    events (on, if_, cancel_on, replay, debounce, batch: see docs/how-to/events.md) and
    hooks (on_start, on_success, on_failure, on_complete, on_wait, on_resume, on_end)."""
    if fn is not None:
        return _make_task(fn, **kwargs)

    def decorate(f: Callable[..., Any]) -> Task[Any, Any]:
        return _make_task(f, **kwargs)

    return decorate


def _make_task(
    fn: Callable[..., Any],
    *,
    id: str | None = None,
    queue: Queue | str | None = None,
    retry: Retry | None = None,
    max_duration: timedelta | float | None = None,
    tags: Sequence[str] = (),
    cron: str | None = None,
    timezone: str | None = None,
    on: str | Sequence[str] | None = None,
    if_: str | None = None,
    cancel_on: Sequence[CancelOn] = (),
    replay: str = "new",
    debounce: Debounce | None = None,
    batch: Batch | None = None,
    **hooks: Hook | None,
) -> Task[Any, Any]:
    task_id = id or kebab(fn.__name__)
    if not re.fullmatch(r"[A-Za-z0-9][\w.:-]{0,127}", task_id):
        raise ConfigurationError(f"invalid task id {task_id!r}", field="id")
    q = queue if isinstance(queue, Queue) else Queue(queue or f"task/{task_id}")
    if cron is not None or timezone is not None:
        from . import cron as _cron  # a bad cron string fails at import, naming the field

        _cron.validate(cron or "* * * * *")
        _cron.zone(timezone)
    events = Subscription.build(on, if_, list(cancel_on), replay, task_group(debounce, batch))
    payload_type, return_type = _payload_and_return(fn)
    t: Task[Any, Any] = Task(
        fn=fn,
        id=task_id,
        queue=q,
        retry=retry or Retry(),
        max_duration=_seconds(max_duration, "max_duration"),
        tags=tuple(tags),
        payload_type=payload_type,
        return_type=return_type,
        cron=cron,
        timezone=timezone,
        events=events,
    )
    for name, hook in hooks.items():
        if hook is None:
            continue
        event = name.removeprefix("on_")
        if not name.startswith("on_") or event not in HOOK_EVENTS:
            raise ConfigurationError(f"unknown task option {name!r}")
        t.hooks.setdefault(event, []).append(hook)
    existing = REGISTRY.get(task_id)
    if existing is not None and _qualname(existing.fn) != _qualname(fn):
        raise ConfigurationError(
            f"two tasks share the id {task_id!r}: {_qualname(existing.fn)} and {_qualname(fn)}",
            field="id",
        )
    REGISTRY[task_id] = t
    return t


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"


def get_task(task_id: str) -> Task[Any, Any] | None:
    return REGISTRY.get(task_id)


__all__ = ["REGISTRY", "Queue", "Retry", "Task", "TriggerOptions", "get_task", "queue", "task"]
