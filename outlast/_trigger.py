"""Building a run: the one place a trigger becomes a validated ``NewRun``.

Every way of starting a run meets here: ``Client`` and ``AsyncClient``, ``Task.trigger``
inside a run (child runs, through ``durable``), the HTTP API and its Trigger.dev
compatibility routes, schedules and the dashboard. A trigger names its task by object
(its code is imported here: the payload is checked with the task's type) or by id (looked
up in ``REGISTRY``, then in the definitions workers published, whose JSON schema checks
the payload). The options are checked in ``build_run`` against the edges of
``_limits``; nothing is written when anything raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from . import _limits, _observe, _serde
from ._config import settings
from ._debounce import Debounce
from ._errors import PayloadTooLarge, UnknownTask, ValidationError
from ._ids import new_id, new_ids
from ._versions import check_version
from .store._match import cancel_paths
from .store.base import NewRun, TaskDef, TaskDefs

if TYPE_CHECKING:
    from .runs import Run
    from .tasks import Task

# The tasks this process has imported, by id (``@task`` registers here): a trigger by id
# finds its task's code here before it looks for a published definition.
REGISTRY: dict[str, Task[Any, Any]] = {}


@dataclass(frozen=True)
class TriggerOptions:
    idempotency_key: str | None = None
    idempotency_key_ttl: timedelta | float | None = None
    delay: timedelta | float | None = None
    ttl: timedelta | float | None = None
    tags: Sequence[str] = ()
    priority: float = 0.0
    metadata: dict[str, Any] | None = None
    max_attempts: int | None = None
    concurrency_key: str | None = None
    queue: str | None = None
    max_duration: timedelta | float | None = None
    # Lock the run to this task code version from the start (C11); None: the current
    # version takes it when it starts.
    version: str | None = None
    # One run per burst of triggers sharing the key (``_debounce``): the run is delayed,
    # and each trigger for the key before it starts replaces it (its delay is the debounce's)
    debounce: Debounce | None = None


# The options of a trigger given none; TriggerOptions is frozen, so one serves every call.
NO_OPTIONS = TriggerOptions()


def replay_options(run: Run) -> TriggerOptions:
    """The options a replay of ``run`` keeps: what decides where and how it runs, not its
    idempotency key (a replay is a new run) nor its timing."""
    return TriggerOptions(
        tags=run.tags,
        priority=run.priority,
        max_attempts=run.max_attempts,
        concurrency_key=run.concurrency_key,
        queue=run.queue,
    )


def prepare_replay(store: TaskDefs, env: str, original: Run, payload: Any) -> NewRun:
    """A new run of ``original``'s task with ``payload``, linked by ``replayed_from``."""
    new = prepare_run(store, env, original.task_id, payload, replay_options(original))
    new.replayed_from = original.id
    return new


# -- a trigger -> its runs ------------------------------------------------------------------


def prepare_run(
    store: TaskDefs, env: str, task: Task[Any, Any] | str, payload: Any, options: TriggerOptions,
    *, published: TaskDef | None = None,
) -> NewRun:
    """Validate a trigger and build its run; raises before anything is written.

    The payload is checked with the task's type when its code is imported here, and
    against the JSON schema its workers published otherwise (an app or a server that
    never imports task code): ``published`` when the caller has it (the HTTP server
    caches definitions), else the store's."""
    local = REGISTRY.get(task) if isinstance(task, str) else task
    if local is not None:
        return task_run(local, payload, options, env)
    if published is None:
        published = _published(store, env, str(task))
    return published_run(published, env, _published_payload(published, payload), options)


def prepare_runs(
    store: TaskDefs,
    env: str,
    task: Task[Any, Any] | str,
    payloads: Iterable[Any],
    options: TriggerOptions,
) -> list[NewRun]:
    """``prepare_run`` for a batch sharing its options: the task is looked up and the
    options checked once, every payload validated; a bad one is named by its index
    (``items[i]``) and nothing is written."""
    local = REGISTRY.get(task) if isinstance(task, str) else task
    if local is not None:
        return task_runs(local, payloads, options, env)
    published = _published(store, env, str(task))
    limit = settings().max_payload_bytes
    return build_runs(
        payloads,
        lambda payload: _published_payload(published, payload, limit),
        lambda text: published_run(published, env, text, options),
    )


def task_run(task: Task[Any, Any], payload: Any, options: TriggerOptions, env: str) -> NewRun:
    """A run of a task whose code is imported: the payload checked with its type."""
    return _task_run(task, task.validate_payload(payload), options, env)


def task_runs(
    task: Task[Any, Any], payloads: Iterable[Any], options: TriggerOptions, env: str
) -> list[NewRun]:
    """Runs for many payloads with the same options, each payload validated; a bad one
    raises a ValidationError naming its index (``items[i]``)."""
    limit = settings().max_payload_bytes
    return build_runs(
        payloads,
        lambda payload: task.validate_payload(payload, limit),
        lambda text: _task_run(task, text, options, env),
    )


def check_options(options: TriggerOptions, env: str) -> None:
    """Check a trigger's options without its task (an app that triggers over HTTP fails
    fast on them; the server checks again with the task's defaults)."""
    build_run(
        task_id="",
        default_queue="",
        default_tags=(),
        default_max_attempts=1,
        default_max_duration=None,
        payload_text="null",
        options=options,
        env=env,
    )


def _task_run(task: Task[Any, Any], payload_text: str, options: TriggerOptions, env: str
              ) -> NewRun:
    run = build_run(
        task_id=task.id,
        default_queue=task.queue.name,
        default_tags=task.tags,
        default_max_attempts=task.retry.max_attempts,
        default_max_duration=task.max_duration,
        payload_text=payload_text,
        options=options,
        env=env,
    )
    if task.events is not None and task.events.cancel_on:
        run.cancel_paths = cancel_paths(task.events.to_spec())
    return run


def _published(store: TaskDefs, env: str, task_id: str) -> TaskDef:
    published = store.get_task(env, task_id)
    if published is None:
        raise unknown_task(env, task_id)
    return published


def unknown_task(env: str, task_id: str) -> UnknownTask:
    """The error of a trigger naming a task neither imported nor published in ``env``."""
    return UnknownTask(
        f"no task {task_id!r} in environment {env!r}: import the module that defines it, "
        "or start a worker that serves it",
        field="task_id",
    )


def _published_payload(published: TaskDef, payload: Any, limit: int | None = None) -> str:
    """A payload checked against the JSON schema the task's workers published."""
    _check_schema(published.payload_schema, payload)
    text = _serde.to_json(payload)
    check_payload_size(text, settings().max_payload_bytes if limit is None else limit)
    return text


def published_run(
    published: TaskDef, env: str, payload_text: str, options: TriggerOptions
) -> NewRun:
    """A run with the defaults of a task as its workers published it (a validated
    payload: schedules fire with a payload they made)."""
    spec = published.spec
    run = build_run(
        task_id=published.id,
        default_queue=published.queue,
        default_tags=spec.get("tags") or (),
        default_max_attempts=int((spec.get("retry") or {}).get("max_attempts", 3)),
        default_max_duration=spec.get("max_duration"),
        payload_text=payload_text,
        options=options,
        env=env,
    )
    run.cancel_paths = cancel_paths(spec.get("events"))
    return run


_validators: dict[str, Any] = {}
# The same, by the schema object: a cached task definition keeps its schema dict, and
# serializing it for the key above cost more than validating a small payload.
_by_object: dict[int, tuple[dict[str, Any], Any]] = {}


def _validator(schema: dict[str, Any]) -> Any:
    hit = _by_object.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    import jsonschema

    # Building a validator costs milliseconds; a task's schema changes only on deploys.
    cache_key = _serde.dumps(schema)
    validator = _validators.get(cache_key)
    if validator is None:
        if len(_validators) > 512:
            _validators.clear()
        validator = _validators[cache_key] = jsonschema.Draft202012Validator(schema)
    if len(_by_object) > 512:
        _by_object.clear()
    _by_object[id(schema)] = (schema, validator)  # holding schema keeps its id unique
    return validator


def _check_schema(schema: dict[str, Any], payload: Any) -> None:
    if not schema:
        return
    validator = _validator(schema)
    if validator.is_valid(payload):  # stops at the first error; most payloads have none
        return
    import jsonschema

    error = jsonschema.exceptions.best_match(validator.iter_errors(payload))
    if error is not None:
        path = list(error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, dict):
            # Name the missing property, as pydantic does ("payload.sku", not "payload").
            path += [k for k in error.validator_value if k not in error.instance][:1]
        where = ".".join(str(p) for p in path)
        field = f"payload.{where}" if where else "payload"
        raise ValidationError(f"{field}: {error.message}", field=field)


# -- validated input -> NewRun ----------------------------------------------------------------


def item_error(exc: ValidationError, index: int) -> ValidationError:
    """``exc`` about one item of a batch, named by its index: ``items[3].payload.n``."""
    field = f"items[{index}].{exc.field}" if exc.field else f"items[{index}]"
    return type(exc)(f"items[{index}]: {exc.message}", field=field)


def check_payload_size(text: str, limit: int) -> None:
    """Raise PayloadTooLarge if ``text`` is over ``limit`` bytes of UTF-8."""
    # A character is at most 4 bytes: most payloads are far below the limit, and then
    # need no encoding to prove it.
    if len(text) * 4 > limit and len(text.encode()) > limit:
        raise PayloadTooLarge(
            f"payload is {len(text.encode())} bytes, over the limit of {limit} bytes",
            field="payload",
            limit=limit,
        )


def build_runs(
    payloads: Iterable[Any],
    validate: Callable[[Any], str],
    build: Callable[[str], NewRun],
) -> list[NewRun]:
    """The runs of a batch: ``validate`` turns each payload into its JSON text, ``build``
    makes the first run (checking the options, as for a single trigger) and the others
    are copies of it with their own id and payload, since a batch shares its options. A
    ValidationError names the item's index (``items[3].payload.n``)."""
    texts: list[str] = []
    first: NewRun | None = None
    for i, payload in enumerate(payloads):
        try:
            texts.append(validate(payload))
            if first is None:
                first = build(texts[0])
        except ValidationError as exc:
            raise item_error(exc, i) from None
    if first is None:
        return []
    runs = [first]
    fields = first.__dict__
    for run_id, text in zip(new_ids("run", len(texts) - 1), texts[1:], strict=True):
        # A shallow copy, a quarter of copy.copy's time (NewRun is a plain dataclass: its
        # fields are its __dict__).
        run = object.__new__(NewRun)
        run.__dict__.update(fields)
        run.id = run_id
        run.payload = text
        run.tags = list(first.tags)  # a list per run, as build_run gives
        runs.append(run)
    return runs


def build_run(
    *,
    task_id: str,
    default_queue: str,
    default_tags: Sequence[str],
    default_max_attempts: int,
    default_max_duration: float | None,
    payload_text: str,
    options: TriggerOptions,
    env: str,
) -> NewRun:
    """A NewRun from validated input; raises ValidationError naming the bad option."""
    tags = _limits.tags([*default_tags, *options.tags])
    key = options.idempotency_key
    if key is not None:
        _limits.text(key, "idempotency_key")
    ckey = options.concurrency_key
    if ckey:
        _limits.text(ckey, "concurrency_key")
    if options.queue:
        _limits.text(options.queue, "queue", max_bytes=_limits.MAX_NAME_BYTES)
    max_attempts = _limits.integer(
        options.max_attempts or default_max_attempts, "max_attempts", low=1, high=1000
    )
    metadata = _serde.to_json(options.metadata or {})
    if not isinstance(options.metadata or {}, dict):
        raise ValidationError("metadata must be an object", field="metadata")
    ttl = _seconds(options.idempotency_key_ttl, "idempotency_key_ttl")
    if ttl is None and key is not None:
        ttl = settings().idempotency_ttl
    # A head start in seconds: a NaN or an infinity would never sort among the others.
    priority = _limits.number(
        options.priority or 0.0, "priority", low=0.0, high=_limits.MAX_SECONDS
    )
    run = NewRun(
        id=new_id("run"),
        env=env,
        task_id=task_id,
        queue=options.queue or default_queue,
        payload=payload_text,
        max_attempts=max_attempts,
        tags=tags,
        metadata=metadata,
        priority=priority,
        concurrency_key=ckey or "",
        idempotency_key=key,
        idempotency_ttl=ttl,
        delay=_seconds(options.delay, "delay") or None,
        ttl=_seconds(options.ttl, "ttl") or None,
        max_duration=_seconds(options.max_duration, "max_duration") or default_max_duration,
        version=check_version(options.version) if options.version is not None else None,
    )
    if options.debounce is not None:
        run.group = _debounce_group(options.debounce)
    if _observe.OBSERVERS:  # metrics count it; tracing opens its trigger span
        _observe.triggered(run)
    return run


def _debounce_group(debounce: Any) -> Any:
    if not isinstance(debounce, Debounce):
        raise ValidationError("debounce takes Debounce(key=..., delay=...)", field="debounce")
    _limits.text(debounce.key, "debounce.key")
    return debounce.group()


def _seconds(value: timedelta | float | None, field: str) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    return _limits.seconds(seconds, field)
