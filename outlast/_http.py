"""The client's HTTP transports: the calls of ``_transport``, over the API of an outlast
server, blocking (``HttpTransport``) and asyncio (``AsyncHttpTransport``).

Each logical request carries a request idempotency key, reused on retries, so a trigger
retried after a lost response returns the first run instead of creating a second (C1).
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from collections.abc import Awaitable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import orjson

from . import _errors as e
from . import _observe, _serde
from ._app_tx import OVER_HTTP
from ._bulk_client import HttpBulk
from ._events_client import AsyncHttpEvents, HttpEvents
from ._http_calls import (
    HttpTrigger,
    Plan,
    Request,
    cancel_plan,
    complete_token_plan,
    create_token_plan,
    get_token_plan,
    list_queues_plan,
    list_runs_plan,
    list_tokens_plan,
    pause_queue_plan,
    queue_limit_plan,
    replay_plan,
    retrieve_plan,
    trigger_plan,
)
from ._http_calls import run_from_json as run_from_json
from ._schedule_client import HttpSchedules
from ._trigger import REGISTRY, TriggerOptions, check_options, item_error
from .runs import Run
from .store.base import Store, Waitpoint
from .waitpoints import Token

if TYPE_CHECKING:
    from ._transport import Triggered
    from .tasks import Task

R = TypeVar("R")

_CODES: dict[str, type[e.OutlastError]] = {
    cls.code: cls
    for cls in (
        e.ValidationError,
        e.PayloadTooLarge,
        e.UnknownTask,
        e.RunNotFound,
        e.TokenNotFound,
        e.TokenTimedOut,
        e.InvalidState,
        e.QueueNotFound,
        e.ScheduleNotFound,
        e.BulkActionNotFound,
        e.EventNotFound,
    )
}


class Unauthorized(e.OutlastError):
    """The secret key is missing, wrong or revoked."""

    code = "unauthorized"


def _backoff(retries: int) -> Iterator[float | None]:
    """The pause after each failed attempt; None for the last attempt, after which the
    failure is the caller's."""
    delay = 0.2
    for _ in range(retries):
        yield delay
        delay *= 3
    yield None


_RETRY: Any = object()


def _settle(outcome: httpx.Response | httpx.TransportError, pause: float | None) -> Any:
    """An attempt's answer, or _RETRY when it failed in a way worth another (a lost
    connection, a 5xx, 408 or 429) and attempts are left (``pause`` is not None)."""
    if isinstance(outcome, httpx.TransportError):
        if pause is None:
            raise outcome
        return _RETRY
    if pause is not None and (outcome.status_code >= 500 or outcome.status_code in (408, 429)):
        return _RETRY
    return _result(outcome)


async def _outcome(pending: Awaitable[httpx.Response]) -> httpx.Response | httpx.TransportError:
    try:
        return await pending
    except httpx.TransportError as exc:
        return exc


def _encode(body: Any, idempotent: bool) -> tuple[bytes | None, dict[str, str]]:
    headers = {"Idempotency-Key": uuid.uuid4().hex} if idempotent else {}
    if _observe.OBSERVERS:  # the caller's trace context, for the trigger's span
        _observe.inject(headers)
    if body is None:
        return None, headers
    headers["Content-Type"] = "application/json"
    return orjson.dumps(body), headers


def _result(resp: httpx.Response) -> Any:
    if resp.status_code < 400:
        return resp.json()
    try:
        body = resp.json()
    except ValueError:
        body = {"error": resp.text}
    message = str(body.get("error") or resp.reason_phrase)
    code = str(body.get("code") or "")
    if resp.status_code == 401:
        raise Unauthorized(message)
    cls = _CODES.get(code, e.OutlastError)
    if issubclass(cls, e.ValidationError):
        raise cls(message, field=body.get("field"))
    raise cls(message, status=resp.status_code)


class _HttpBase:
    """What both sessions share: the target, the key, and building triggers."""

    def __init__(self, api_url: str, secret_key: str, *, timeout: float = 30.0,
                 retries: int = 3, env: str = "") -> None:
        if not secret_key:
            raise e.ConfigurationError(
                "an API URL needs a secret key: pass secret_key= or set OUTLAST_SECRET_KEY",
                field="OUTLAST_SECRET_KEY",
            )
        self.api_url = api_url.rstrip("/")
        self.retries = retries
        self.env = env
        self._secret_key = secret_key
        self._timeout = timeout
        self._headers = {"Authorization": f"Bearer {secret_key}"}

    def _new(self, task: Task[Any, Any] | str, payload: Any,
             options: TriggerOptions) -> HttpTrigger:
        local = REGISTRY.get(task) if isinstance(task, str) else task
        task_id = local.id if local is not None else str(task)
        # Fail fast on what can be checked here (the payload, when the task's code is
        # imported; the options). The server validates again and applies the task's
        # defaults, which an app that never imported the task does not know.
        text = local.validate_payload(payload) if local is not None else _serde.to_json(payload)
        check_options(options, self.env)
        return HttpTrigger(task_id, text, options)

    def _batch(self, task: Task[Any, Any] | str, payloads: Iterable[Any],
               options: TriggerOptions) -> list[HttpTrigger]:
        items = []
        for i, payload in enumerate(payloads):
            try:
                items.append(self._new(task, payload, options))
            except e.ValidationError as exc:
                raise item_error(exc, i) from None
        return items


class HttpTransport(HttpSchedules, HttpBulk, HttpEvents, _HttpBase):
    """``Transport`` over HTTP, on a blocking httpx session."""

    def __init__(self, api_url: str, secret_key: str, *, timeout: float = 30.0,
                 retries: int = 3, env: str = "") -> None:
        super().__init__(api_url, secret_key, timeout=timeout, retries=retries, env=env)
        self._http = httpx.Client(base_url=self.api_url, headers=self._headers,
                                  timeout=timeout)

    @property
    def store(self) -> Store:
        raise e.ConfigurationError("this client talks HTTP; it has no database store")

    def check(self) -> None:
        """Nothing to check before the first call: the server checks its own schema."""

    def asynchronous(self) -> AsyncHttpTransport:
        return AsyncHttpTransport(self.api_url, self._secret_key, timeout=self._timeout,
                                  retries=self.retries, env=self.env)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, json: Any = None,
                params: dict[str, Any] | None = None, idempotent: bool = False) -> Any:
        content, headers = _encode(json, idempotent)
        for pause in _backoff(self.retries):
            try:
                outcome: httpx.Response | httpx.TransportError = self._http.request(
                    method, path, content=content, params=params, headers=headers
                )
            except httpx.TransportError as exc:
                outcome = exc
            if (answer := _settle(outcome, pause)) is not _RETRY:
                return answer
            time.sleep(pause or 0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _run(self, plan: Plan[R]) -> R:
        try:
            req = next(plan)
            while True:
                req = plan.send(self.request(req.method, req.path, json=req.json,
                                             params=req.params, idempotent=req.idempotent))
        except StopIteration as done:
            value: R = done.value
            return value

    # -- the client's calls ---------------------------------------------------------------
    def trigger(self, task: Task[Any, Any] | str, payload: Any,
                options: TriggerOptions) -> Triggered:
        return self._run(trigger_plan([self._new(task, payload, options)]))[0]

    def trigger_in(self, task: Task[Any, Any] | str, payload: Any, options: TriggerOptions,
                   connection: Any) -> Triggered:
        raise e.ConfigurationError(OVER_HTTP, field="connection")

    def batch_trigger(self, task: Task[Any, Any] | str, payloads: Iterable[Any],
                      options: TriggerOptions) -> list[Triggered]:
        return self._run(trigger_plan(self._batch(task, payloads, options)))

    def retrieve(self, run_id: str) -> Run:
        return self._run(retrieve_plan(run_id))

    def list_runs(self, **filters: Any) -> list[Run]:
        return self._run(list_runs_plan(filters))

    def cancel(self, run_id: str) -> Run:
        return self._run(cancel_plan(run_id))

    def replay(self, run_id: str, payload: Any, has_payload: bool) -> tuple[str, str]:
        """Start a replay; returns the new run's id and task id."""
        return self._run(replay_plan(run_id, payload, has_payload))

    def create_token(self, timeout: float | None, idempotency_key: str | None,
                     idempotency_ttl: float | None, tags: Sequence[str]) -> Token:
        return self._run(create_token_plan(timeout, idempotency_key, idempotency_ttl, tags))

    def complete_token(self, token_id: str, data: Any) -> Waitpoint:
        return self._run(complete_token_plan(token_id, data))

    def get_token(self, token_id: str) -> Waitpoint:
        return self._run(get_token_plan(token_id))

    def list_tokens(self, status: str | None, limit: int) -> list[Waitpoint]:
        return self._run(list_tokens_plan(status, limit))

    def list_queues(self) -> list[dict[str, Any]]:
        return self._run(list_queues_plan())

    def pause_queue(self, name: str, paused: bool) -> dict[str, Any]:
        return self._run(pause_queue_plan(name, paused))

    def set_queue_limit(self, name: str, limit: int | None) -> dict[str, Any]:
        return self._run(queue_limit_plan(name, limit))


class AsyncHttpTransport(AsyncHttpEvents, _HttpBase):
    """``AsyncTransport`` over HTTP, on an asyncio httpx session: the same plans as
    ``HttpTransport``; a request awaits its answer and its back-off on the loop."""

    def __init__(self, api_url: str, secret_key: str, *, timeout: float = 30.0,
                 retries: int = 3, env: str = "") -> None:
        super().__init__(api_url, secret_key, timeout=timeout, retries=retries, env=env)
        # A session's connections belong to the loop that opened them: a process-wide
        # client used from a second loop (another asyncio.run, a thread with its own
        # loop) gets a session there; a loop's session goes with the loop.
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                                  httpx.AsyncClient] = weakref.WeakKeyDictionary()

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None:
            session = self._sessions[loop] = httpx.AsyncClient(
                base_url=self.api_url, headers=self._headers, timeout=self._timeout
            )
        return session

    async def close(self) -> None:
        """Close this loop's session."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.aclose()

    async def request(self, req: Request) -> Any:
        content, headers = _encode(req.json, req.idempotent)
        http = self._client()
        for pause in _backoff(self.retries):
            outcome = await _outcome(http.request(req.method, req.path, content=content,
                                                  params=req.params, headers=headers))
            if (answer := _settle(outcome, pause)) is not _RETRY:
                return answer
            await asyncio.sleep(pause or 0)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run(self, plan: Plan[R]) -> R:
        try:
            req = next(plan)
            while True:
                req = plan.send(await self.request(req))
        except StopIteration as done:
            value: R = done.value
            return value

    async def trigger(self, task: Task[Any, Any] | str, payload: Any,
                      options: TriggerOptions) -> Triggered:
        return (await self._run(trigger_plan([self._new(task, payload, options)])))[0]

    async def trigger_in(self, task: Task[Any, Any] | str, payload: Any,
                         options: TriggerOptions, connection: Any) -> Triggered:
        raise e.ConfigurationError(OVER_HTTP, field="connection")

    async def batch_trigger(self, task: Task[Any, Any] | str, payloads: Iterable[Any],
                            options: TriggerOptions) -> list[Triggered]:
        return await self._run(trigger_plan(self._batch(task, payloads, options)))

    async def retrieve(self, run_id: str) -> Run:
        return await self._run(retrieve_plan(run_id))

    async def list_runs(self, **filters: Any) -> list[Run]:
        return await self._run(list_runs_plan(filters))

    async def cancel(self, run_id: str) -> Run:
        return await self._run(cancel_plan(run_id))

    async def replay(self, run_id: str, payload: Any, has_payload: bool) -> tuple[str, str]:
        return await self._run(replay_plan(run_id, payload, has_payload))

    async def create_token(self, timeout: float | None, idempotency_key: str | None,
                           idempotency_ttl: float | None, tags: Sequence[str]) -> Token:
        return await self._run(
            create_token_plan(timeout, idempotency_key, idempotency_ttl, tags)
        )

    async def complete_token(self, token_id: str, data: Any) -> Waitpoint:
        return await self._run(complete_token_plan(token_id, data))

    async def get_token(self, token_id: str) -> Waitpoint:
        return await self._run(get_token_plan(token_id))

    async def list_tokens(self, status: str | None, limit: int) -> list[Waitpoint]:
        return await self._run(list_tokens_plan(status, limit))

    async def list_queues(self) -> list[dict[str, Any]]:
        return await self._run(list_queues_plan())

    async def pause_queue(self, name: str, paused: bool) -> dict[str, Any]:
        return await self._run(pause_queue_plan(name, paused))

    async def set_queue_limit(self, name: str, limit: int | None) -> dict[str, Any]:
        return await self._run(queue_limit_plan(name, limit))
