"""The HTTP API under /api/v1 (and the /api/v2, /api/v3 paths the Trigger.dev SDK calls).

Endpoints are plain ``def``s: FastAPI runs them in its thread pool, where the store's
synchronous calls belong. Every store call is scoped to the environment of the caller's
secret key; another environment's object answers 404, like one that does not exist.
"""

import asyncio
import json
from typing import Annotated, Any

import orjson
import pydantic
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from .. import _limits, _serde
from .._errors import QueueNotFound, RunNotFound, TokenNotFound, ValidationError
from .._ids import new_id
from .._trigger import REGISTRY, prepare_replay, prepare_run, unknown_task
from ..explain import why
from ..runs import Run
from ..store.base import ApiStore, NewRun, QueueListing, TaskDef
from ..waitpoints import callback_url, verify
from .bodies import (
    MAX_BATCH_ITEMS,
    batch_items,
    documented_body,
    json_response,
    parse_body,
    read_limited,
)
from .durations import seconds_from
from .event_stream import event_stream
from .serialize import event_json, queue_json, related_json, run_json, step_json, token_json
from .task_cache import TaskCache
from .trigger_commit import TriggerCommitter
from .trigger_options import (
    Integer,
    Number,
    Text,
    TriggerOptionsBody,
    as_on_the_wire,
    options_from,
)


class TriggerBody(BaseModel):
    payload: Any = None
    options: TriggerOptionsBody | None = None


class TriggerResponse(BaseModel):
    id: str
    isCached: bool = False


class BatchItem(BaseModel):
    task: Text | None = None
    payload: Any = None
    options: TriggerOptionsBody | None = None


class BatchBody(BaseModel):
    items: list[BatchItem] = Field(..., max_length=MAX_BATCH_ITEMS)


class BatchManyItem(BatchItem):
    task: Text = Field(..., min_length=1)


class BatchManyBody(BaseModel):
    items: list[BatchManyItem] = Field(..., max_length=MAX_BATCH_ITEMS)


class BatchResponse(BaseModel):
    id: str
    runCount: int
    runs: list[TriggerResponse]


class ReplayBody(BaseModel):
    payload: Any = Field(None, description="a new payload; absent: the original one")


class ReplayResponse(BaseModel):
    id: str
    taskIdentifier: str
    replayedFrom: str


class TokenBody(BaseModel):
    timeout: str | Number | None = None
    idempotencyKey: Text | None = Field(None, max_length=2048)
    idempotencyKeyTTL: str | Number | None = None
    tags: Text | list[Text] | None = None


class CompleteBody(BaseModel):
    data: Any = None


class PauseBody(BaseModel):
    action: str = Field("pause", pattern="^(pause|resume)$")


class LimitBody(BaseModel):
    limit: Integer | None = Field(None, ge=0, le=_limits.MAX_INT)


def _decode_payload(payload: Any, payload_type: str | None) -> Any:
    """Payloads arrive as JSON values (outlast clients) or as packets (the Trigger.dev
    SDK: a string, JSON or superjson by payloadType)."""
    if payload_type in (None, "application/store"):
        return payload
    if payload_type == "application/json" and isinstance(payload, str):
        try:
            return json.loads(payload) if payload else None
        except json.JSONDecodeError:
            raise ValidationError("payload is not valid JSON", field="payload") from None
    if payload_type == "application/super+json" and isinstance(payload, str):
        from .superjson import decode

        return decode(payload)
    if payload_type == "text/plain":
        return payload
    return payload


def prepare_request(store: ApiStore, env: str, task_id: str, payload: Any,
                    options: TriggerOptionsBody | dict[str, Any] | None, where: str = "",
                    *, published: TaskDef | None = None) -> NewRun:
    """A trigger as the Trigger.dev SDK sends it (options in its names, as a body model or
    the raw dict of a streamed batch item; a payload by ``payloadType``) built into a
    validated run; ``where`` (``items[3]``) prefixes the fields of a batch item's errors."""
    if isinstance(options, dict):
        try:
            options = TriggerOptionsBody.model_validate(options)
        except pydantic.ValidationError as exc:
            raise _serde.validation_error(exc, f"{where}.options") from None
    try:
        opts, payload_type = options_from(options, store.now())
        payload, payload_type = resolve_payload(store, env, payload, payload_type)
        return prepare_run(store, env, task_id, _decode_payload(payload, payload_type), opts,
                           published=published)
    except ValidationError as exc:
        err = as_on_the_wire(exc)
        if not where:
            raise err from None
        field = f"{where}.{err.field}" if err.field else where
        raise type(err)(f"{where}: {err.message}", field=field) from None


def resolve_payload(store: ApiStore, env: str, payload: Any, payload_type: str | None
                    ) -> tuple[Any, str | None]:
    """An ``application/store`` payload names a packet uploaded before the trigger: load
    it and return it with its own content type."""
    if payload_type != "application/store":
        return payload, payload_type
    if not isinstance(payload, str):
        raise ValidationError("an application/store payload is a packet path", field="payload")
    _limits.text(payload, "payload")
    packet = store.get_packet(env, payload)
    if packet is None:
        raise ValidationError(f"no uploaded packet {payload!r}", field="payload")
    content_type, data = packet
    return data, content_type.split(";")[0].strip()


async def _request_key(
    a: str | None = Header(
        None, alias="x-trigger-request-idempotency-key", include_in_schema=False
    ),
    b: str | None = Header(None, alias="idempotency-key", description="retry-safe request key"),
) -> str | None:
    key = a or b
    if key is not None:  # stored in a unique index: its row has a size limit
        _limits.text(key, "Idempotency-Key")
    return key


RequestKey = Annotated[str | None, Depends(_request_key)]


def _triggered(store: ApiStore, env: str, runs: list[NewRun], key: str | None
               ) -> list[TriggerResponse]:
    if key:
        results, _ = store.trigger_once(env, key, runs)
    else:
        results = store.trigger(runs)
    return [TriggerResponse(id=r.id, isCached=r.is_cached) for r in results]


def _get_run(store: ApiStore, env: str, run_id: str) -> Run:
    run = store.get_run(env, run_id)
    if run is None:
        raise RunNotFound(f"no run {run_id!r}", field="run_id")
    return run


def _run_detail(store: ApiStore, env: str, run_id: str) -> dict[str, Any]:
    run = _get_run(store, env, run_id)
    related: dict[str, Any] = {}
    if run.parent_id:
        parent = store.get_run(env, run.parent_id)
        if parent is not None:
            related["parent"] = related_json(parent)
    if run.root_id and run.root_id != run.parent_id:
        root = store.get_run(env, run.root_id)
        if root is not None:
            related["root"] = related_json(root)
    children = store.list_runs(env, parent_id=run.id, limit=1000)
    if children:
        related["children"] = [related_json(c) for c in children]
    return run_json(run, why=why(store, run), related=related)


def _complete_by_callback(store: ApiStore, token_id: str, signature: str, raw: bytes
                          ) -> JSONResponse:
    """A token completed from its callback URL: the signed URL is the credential."""
    env = None
    if len(signature) == 64 and verify(store, token_id, signature):
        env = store.waitpoint_env(token_id)
    if env is None:
        raise HTTPException(401, "invalid callback signature")
    # The body is the output: JSON as its value, any other text as a string (a
    # form post or a plain-text webhook), nothing as {}.
    try:
        data = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        data = raw.decode("utf-8", errors="replace")
    store.complete_waitpoint(env, token_id, _serde.to_json(data))
    return JSONResponse({"success": True})


def _queue_state(store: ApiStore, env: str, name: str) -> QueueListing:
    for q in store.list_queues(env):
        if q["name"] == name:
            return q
    raise QueueNotFound(f"no queue {name!r}", field="name")


def build_router(store: ApiStore, env_dependency: Any) -> APIRouter:
    """The API's routes, in the order the OpenAPI document lists them."""
    router = APIRouter()
    _trigger_routes(router, store, env_dependency)
    _run_reading_routes(router, store, env_dependency)
    _run_action_routes(router, store, env_dependency)
    _token_routes(router, store, env_dependency)
    _queue_routes(router, store, env_dependency)
    return router


def _trigger_routes(router: APIRouter, store: ApiStore, env_dependency: Any) -> None:
    """Triggering: one run, a batch of one task, a batch of several. Every one validates
    its request first, then waits for its runs to commit in a group with the other
    requests of the moment (trigger_commit.py): a 2xx follows the commit."""
    Env = Annotated[str, Depends(env_dependency)]
    committer = TriggerCommitter.of(store)
    tasks = TaskCache.of(store)

    # On the loop, no thread: the body parsed by pydantic from its bytes, the task's
    # definition from the cache, the answer written by orjson; the commit is the
    # committer thread's. FastAPI would validate the response against its model again.
    @router.post("/api/v1/tasks/{task_id}/trigger", response_model=TriggerResponse,
                 tags=["runs"], summary="Trigger a run of a task",
                 openapi_extra=documented_body(TriggerBody))
    async def trigger(task_id: str, request: Request, env: Env, key: RequestKey) -> Response:
        body = parse_body(await request.body(), TriggerBody)
        new = await prepare_async(store, tasks, env, task_id, body.payload, body.options)
        results, _ = await committer.trigger(env, [new], key)
        return Response(orjson.dumps({"id": results[0].id, "isCached": results[0].is_cached}),
                        media_type="application/json")

    # The batch routes parse and validate in a thread: FastAPI would parse and validate a
    # body of 100,000 items on the event loop (see bodies.py). The models stay documented.
    def _batch_runs(env: str, raw: bytearray, envelope: type[BaseModel],
                    item_model: type[BatchItem], task_id: str | None) -> list[NewRun]:
        items = batch_items(raw, envelope, item_model)
        published = tasks.memo(env)
        return [
            prepare_request(store, env, item.task or task_id or "", item.payload, item.options,
                            f"items[{i}]", published=published(item.task or task_id or ""))
            for i, item in enumerate(items)
        ]

    async def _batch(env: str, raw: bytearray, envelope: type[BaseModel],
                     item_model: type[BatchItem], task_id: str | None, key: str | None
                     ) -> Response:
        runs = await run_in_threadpool(_batch_runs, env, raw, envelope, item_model, task_id)
        results, _ = await committer.trigger(env, runs, key)
        out = BatchResponse(id=new_id("batch"), runCount=len(results),
                            runs=[TriggerResponse(id=r.id, isCached=r.is_cached)
                                  for r in results])
        return json_response(out)

    @router.post("/api/v1/tasks/{task_id}/batch", response_model=BatchResponse, tags=["runs"],
                 summary="Trigger many runs of one task in one transaction",
                 openapi_extra=documented_body(BatchBody))
    async def batch_one(task_id: str, request: Request, env: Env, key: RequestKey) -> Response:
        raw = await read_limited(request)
        return await _batch(env, raw, BatchBody, BatchItem, task_id, key)

    @router.post("/api/v2/tasks/batch", response_model=BatchResponse, tags=["runs"],
                 summary="Trigger runs of several tasks in one transaction",
                 openapi_extra=documented_body(BatchManyBody))
    async def batch_many(request: Request, env: Env, key: RequestKey) -> Response:
        raw = await read_limited(request)
        return await _batch(env, raw, BatchManyBody, BatchManyItem, None, key)


async def prepare_async(store: ApiStore, tasks: TaskCache, env: str, task_id: str,
                        payload: Any, options: TriggerOptionsBody | None) -> NewRun:
    """``prepare_request`` on the loop: with the task's cached definition (read in a
    thread when not cached), and whole in a thread for a payload that is an uploaded
    packet (read from the database)."""
    published = await tasks.lookup(env, task_id)
    if published is None and task_id not in REGISTRY:
        raise unknown_task(env, task_id)
    if options is not None and options.payloadType == "application/store":
        return await asyncio.to_thread(prepare_request, store, env, task_id, payload, options,
                                       published=published)
    return prepare_request(store, env, task_id, payload, options, published=published)


def _run_reading_routes(router: APIRouter, store: ApiStore, env_dependency: Any) -> None:
    """Retrieving and listing runs."""
    Env = Annotated[str, Depends(env_dependency)]

    @router.get("/api/v1/runs/{run_id}", tags=["runs"], summary="Retrieve a run")
    def retrieve(run_id: str, env: Env) -> dict[str, Any]:
        return _run_detail(store, env, run_id)

    @router.get("/api/v3/runs/{run_id}", tags=["runs"], summary="Retrieve a run (SDK path)")
    def retrieve_v3(run_id: str, env: Env) -> dict[str, Any]:
        return _run_detail(store, env, run_id)

    @router.get("/api/v1/runs", tags=["runs"], summary="List runs, newest first")
    def list_runs(
        request: Request,
        env: Env,
        status: str | None = Query(None, description="comma-separated statuses"),
        task: str | None = None,
        tag: str | None = None,
        queue: str | None = None,
        created_from: float | None = Query(None, description="epoch seconds"),
        created_to: float | None = Query(None, description="epoch seconds"),
        search: str | None = Query(None, description="a run id or idempotency key"),
        limit: int = Query(25, ge=1, le=1000),
        cursor: str | None = Query(None, description="pagination.next of the previous page"),
    ) -> dict[str, Any]:
        q = request.query_params  # the Trigger.dev SDK's filter[...] / page[...] names
        status = status or q.get("filter[status]")
        statuses = [s.strip().upper() for s in status.split(",")] if status else None
        ms_from, ms_to = q.get("filter[createdAt][from]"), q.get("filter[createdAt][to]")
        try:
            size = int(q.get("page[size]") or limit)
            created_from = float(ms_from) / 1000 if ms_from else created_from
            created_to = float(ms_to) / 1000 if ms_to else created_to
        except ValueError:
            raise ValidationError("page[size] and filter[createdAt] are numbers",
                                  field="filter") from None
        runs = store.list_runs(
            env,
            status=statuses,
            task_id=task or q.get("filter[taskIdentifier]"),
            tag=tag or q.get("filter[tag]"),
            queue=queue or q.get("filter[queue]"),
            created_from=created_from,
            created_to=created_to,
            search=search,
            limit=max(1, min(size, 1000)) + 1,
            before=cursor or q.get("page[after]"),
        )
        page, more = runs[: max(1, min(size, 1000))], len(runs) > max(1, min(size, 1000))
        return {
            "data": [run_json(r) for r in page],
            "pagination": {"next": page[-1].id} if more and page else {},
        }


def _run_action_routes(router: APIRouter, store: ApiStore, env_dependency: Any) -> None:
    """Cancelling and replaying a run; its journal, logs and live events."""
    Env = Annotated[str, Depends(env_dependency)]

    @router.post("/api/v1/runs/{run_id}/cancel", tags=["runs"], summary="Cancel a run")
    def cancel(run_id: str, env: Env) -> dict[str, Any]:
        try:
            run, _ = store.cancel(env, run_id)
        except RunNotFound as exc:
            raise RunNotFound(exc.message, field="run_id") from None
        return {"id": run.id, "status": str(run.status)}

    @router.post("/api/v2/runs/{run_id}/cancel", tags=["runs"], summary="Cancel (SDK path)")
    def cancel_v2(run_id: str, env: Env) -> dict[str, Any]:
        return cancel(run_id, env)

    @router.post("/api/v1/runs/{run_id}/replay", response_model=ReplayResponse, tags=["runs"],
                 summary="Start a new run with the same (or a new) payload")
    def replay(run_id: str, env: Env, key: RequestKey, body: ReplayBody | None = None
               ) -> ReplayResponse:
        original = _get_run(store, env, run_id)
        # "payload": null is a new payload (null); no "payload" key keeps the original.
        new_payload = body is not None and "payload" in body.model_fields_set
        new = prepare_replay(store, env, original,
                             body.payload if body is not None and new_payload else original.payload)
        # With a request key, a retried replay returns the first one's run (C1).
        return ReplayResponse(id=_triggered(store, env, [new], key)[0].id,
                              taskIdentifier=original.task_id, replayedFrom=original.id)

    @router.get("/api/v1/runs/{run_id}/steps", tags=["runs"], summary="A run's journal")
    def steps(run_id: str, env: Env) -> dict[str, Any]:
        _get_run(store, env, run_id)
        return {"data": [step_json(j) for j in store.journal(run_id)]}

    @router.get("/api/v1/runs/{run_id}/logs", tags=["runs"],
                summary="A run's logs, attempts and events")
    def logs(run_id: str, env: Env, after: int = Query(0, ge=0, le=_limits.MAX_ID)
             ) -> dict[str, Any]:
        _get_run(store, env, run_id)
        return {"data": [event_json(e) for e in store.events(run_id, after)]}

    @router.get("/api/v1/runs/{run_id}/events", tags=["runs"],
                summary="Server-Sent Events: status, step, log, metadata, end",
                response_class=StreamingResponse)
    async def events(run_id: str, env: Env) -> StreamingResponse:
        await asyncio.to_thread(_get_run, store, env, run_id)
        return StreamingResponse(
            event_stream(store, env, run_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def _token_routes(router: APIRouter, store: ApiStore, env_dependency: Any) -> None:
    """Waitpoint tokens: create, list, retrieve, complete (also from the callback URL)."""
    Env = Annotated[str, Depends(env_dependency)]

    @router.post("/api/v1/waitpoints/tokens", tags=["waitpoints"],
                 summary="Create a waitpoint token")
    def create_token(body: TokenBody, env: Env, key: RequestKey) -> dict[str, Any]:
        now = store.now()
        timeout = seconds_from(body.timeout, "timeout", now)
        tags = _limits.tags([body.tags] if isinstance(body.tags, str) else list(body.tags or []))
        if body.idempotencyKey is not None:
            _limits.text(body.idempotencyKey, "idempotencyKey")
        token_id = new_id("waitpoint")
        wp = store.create_token(
            env,
            token_id,
            timeout_at=now + timeout if timeout is not None else None,
            idempotency_key=body.idempotencyKey,
            idempotency_ttl=seconds_from(body.idempotencyKeyTTL, "idempotencyKeyTTL", now),
            tags=tags,
            request_key=key,
        )
        return {"id": wp.id, "isCached": wp.id != token_id, "url": callback_url(store, wp.id)}

    @router.get("/api/v1/waitpoints/tokens", tags=["waitpoints"], summary="List tokens")
    def list_tokens(env: Env, status: str | None = None, limit: int = Query(100, ge=1, le=1000)
                    ) -> dict[str, Any]:
        mapped = {"WAITING": "pending", "COMPLETED": "completed", "TIMED_OUT": "timed_out"}
        st = mapped.get((status or "").upper(), status.lower() if status else None)
        wps = [w for w in store.list_waitpoints(env, status=st, limit=limit) if w.kind == "token"]
        return {"data": [token_json(w) for w in wps], "pagination": {}}

    @router.get("/api/v1/waitpoints/tokens/{token_id}", tags=["waitpoints"],
                summary="Retrieve a token")
    def get_token(token_id: str, env: Env) -> dict[str, Any]:
        wp = store.get_waitpoint(env, token_id)
        if wp is None or wp.kind != "token":
            raise TokenNotFound(f"no waitpoint token {token_id!r}", field="id")
        return token_json(wp, callback_url(store, wp.id))

    @router.post("/api/v1/waitpoints/tokens/{token_id}/complete", tags=["waitpoints"],
                 summary="Complete a token; the first completion wins")
    def complete_token(token_id: str, body: CompleteBody, env: Env) -> dict[str, Any]:
        store.complete_waitpoint(env, token_id, _serde.to_json(body.data))
        return {"success": True}

    @router.post("/api/v1/waitpoints/tokens/{token_id}/callback/{signature}",
                 tags=["waitpoints"],
                 summary="Complete a token from its callback URL (no API key; the signed "
                         "URL is the credential); the JSON body becomes the output")
    async def callback(token_id: str, signature: str, request: Request) -> JSONResponse:
        raw = await request.body()

        return await asyncio.to_thread(_complete_by_callback, store, token_id, signature, raw)


def _queue_routes(router: APIRouter, store: ApiStore, env_dependency: Any) -> None:
    """Queues: list, state, pause and resume, concurrency limit."""
    Env = Annotated[str, Depends(env_dependency)]

    @router.get("/api/v1/queues", tags=["queues"], summary="List queues")
    def list_queues(env: Env) -> dict[str, Any]:
        return {"data": [queue_json(q) for q in store.list_queues(env)]}

    @router.get("/api/v1/queues/{name:path}/state", tags=["queues"], summary="Retrieve a queue")
    def get_queue(name: str, env: Env) -> dict[str, Any]:
        return queue_json(_queue_state(store, env, name))

    @router.post("/api/v1/queues/{name:path}/pause", tags=["queues"],
                 summary="Pause or resume a queue ({action: pause|resume})")
    def pause_queue(name: str, body: PauseBody, env: Env) -> dict[str, Any]:
        _queue_state(store, env, name)
        store.update_queue(env, name, paused=body.action == "pause")
        return queue_json(_queue_state(store, env, name))

    @router.post("/api/v1/queues/{name:path}/concurrency", tags=["queues"],
                 summary="Set the concurrency limit (null removes it)")
    def set_limit(name: str, body: LimitBody, env: Env) -> dict[str, Any]:
        _queue_state(store, env, name)
        store.update_queue(env, name, concurrency_limit=body.limit)
        return queue_json(_queue_state(store, env, name))
