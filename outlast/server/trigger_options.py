"""Trigger options as the HTTP API takes them: the Trigger.dev SDK's names and shapes
(``TriggerOptionsBody``), turned into ``TriggerOptions`` (``options_from``), and an
option's error named as the request spells it (``as_on_the_wire``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from .._debounce import Debounce
from .._errors import ValidationError
from .._trigger import TriggerOptions
from .durations import MAX_SECONDS, seconds_from

# PostgreSQL text cannot hold a NUL character, and no name, key or tag needs one: refuse it
# here (a 422 naming the field) rather than fail in the database (a 500).
Text = Annotated[str, Field(pattern=r"^[^\x00]*$")]


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a number is expected, not true or false")
    return value


# JSON true is not a number, though pydantic's lax mode reads it as 1 (a ttl of 1 s); NaN
# and the infinities are not numbers a run can be scheduled or ordered by.
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Integer = Annotated[int, BeforeValidator(_not_bool)]

# Trigger options as TriggerOptions names them -> as the wire does, for error fields.
_WIRE = {
    "idempotency_key": "idempotencyKey", "idempotency_key_ttl": "idempotencyKeyTTL",
    "concurrency_key": "concurrencyKey", "max_attempts": "maxAttempts",
    "max_duration": "maxDuration", "queue": "queue", "tags": "tags", "delay": "delay",
    "ttl": "ttl", "priority": "priority", "metadata": "metadata", "version": "lockToVersion",
    "debounce.key": "debounce.key",
}


def as_on_the_wire(exc: ValidationError) -> ValidationError:
    """An option's error (checked in build_run, where every trigger path meets) named as
    the request spells it: ``concurrency_key`` -> ``options.concurrencyKey``."""
    if exc.field not in _WIRE:
        return exc
    wire = f"options.{_WIRE[exc.field]}"
    message = exc.message
    if message.startswith(exc.field):
        message = wire + message[len(exc.field):]
    return type(exc)(message, field=wire)


class QueueRef(BaseModel):
    name: Text


class TriggerOptionsBody(BaseModel):
    """Trigger options, in the Trigger.dev SDK's names. Unknown options are ignored."""

    model_config = ConfigDict(extra="allow")

    payloadType: Text | None = None
    queue: QueueRef | Text | None = None
    concurrencyKey: Text | Integer | None = None
    delay: str | Number | None = Field(None, description="seconds, '10m', or an ISO date")
    ttl: str | Number | None = Field(None, description="seconds or '1h'")
    idempotencyKey: Text | None = Field(None, max_length=2048)
    idempotencyKeyTTL: str | Number | None = None
    tags: Text | list[Text] | None = None
    metadata: dict[str, Any] | None = None
    maxAttempts: Integer | None = Field(None, ge=1, le=100)
    maxDuration: Number | None = Field(None, gt=0, le=MAX_SECONDS)
    priority: Number | None = Field(None, ge=0, le=MAX_SECONDS, description="a head start, s")
    lockToVersion: Text | None = Field(None, description="a task code version to lock to")
    debounce: DebounceBody | None = None


class DebounceBody(BaseModel):
    """Trigger.dev 4.3's ``debounce``: one delayed run per burst of triggers sharing
    ``key``. Without ``mode`` the first trigger's payload is kept, as Trigger.dev does."""

    key: Text = Field(..., min_length=1, max_length=512)
    delay: str | Number = Field(..., description="seconds or '5s': the quiet time before it starts")
    mode: Literal["leading", "trailing"] = "leading"
    maxDelay: str | Number | None = Field(None, description="the longest a burst delays it")


def options_from(body: TriggerOptionsBody | None, now: float) -> tuple[TriggerOptions, str | None]:
    if body is None:
        return TriggerOptions(), None
    tags = [body.tags] if isinstance(body.tags, str) else list(body.tags or [])
    queue = body.queue.name if isinstance(body.queue, QueueRef) else body.queue
    return (
        TriggerOptions(
            idempotency_key=body.idempotencyKey,
            idempotency_key_ttl=seconds_from(
                body.idempotencyKeyTTL, "options.idempotencyKeyTTL", now
            ),
            delay=seconds_from(body.delay, "options.delay", now),
            ttl=seconds_from(body.ttl, "options.ttl", now),
            tags=tags,
            priority=body.priority or 0.0,
            metadata=body.metadata,
            max_attempts=body.maxAttempts,
            concurrency_key=str(body.concurrencyKey) if body.concurrencyKey is not None else None,
            queue=queue,
            max_duration=body.maxDuration,
            version=body.lockToVersion,
            debounce=_debounce(body.debounce, now),
        ),
        body.payloadType,
    )


def _debounce(body: DebounceBody | None, now: float) -> Debounce | None:
    if body is None:
        return None
    delay = seconds_from(body.delay, "options.debounce.delay", now)
    max_delay = seconds_from(body.maxDelay, "options.debounce.maxDelay", now)
    try:
        return Debounce(body.key, delay, max_delay, mode=body.mode)
    except ValidationError as exc:  # named as the request spells it
        wire = {"debounce.period": "delay", "debounce.timeout": "maxDelay"}
        field = f"options.debounce.{wire.get(exc.field or '', 'key')}"
        message = exc.message.removeprefix(exc.field or "")
        raise ValidationError(f"{field}{message}", field=field) from None
