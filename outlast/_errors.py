"""One tree of errors. Each has a stable ``code`` that the CLI, API and dashboard show.

The docstring is the default message. The control-flow signal of a lost lease is not
here: it derives from ``BaseException`` in ``_signals.py`` so that a task's
``except Exception:`` never swallows it. (Suspension, cancellation and timeouts
set the run context's end reason and unwind task code with asyncio's own
cancellation, so they need no signal class.)
"""

from __future__ import annotations

from typing import Any, ClassVar


class OutlastError(Exception):
    """Something went wrong in outlast."""

    code: ClassVar[str] = "outlast_error"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.details = details
        super().__init__(self.message)


class ConfigurationError(OutlastError):
    """The configuration is invalid."""

    code = "configuration_error"


class SchemaVersionError(ConfigurationError):
    """The database schema is not the version this code expects."""

    code = "schema_version"


class ValidationError(OutlastError):
    """The input is invalid."""

    code = "validation_error"

    def __init__(self, message: str | None = None, *, field: str | None = None, **details: Any):
        super().__init__(message, field=field, **details)
        self.field = field


class PayloadTooLarge(ValidationError):
    """The payload is larger than the configured limit."""

    code = "payload_too_large"


class UnknownTask(OutlastError):
    """No task is registered under this id."""

    code = "unknown_task"


class RunNotFound(OutlastError):
    """No run has this id."""

    code = "run_not_found"


class EventNotFound(OutlastError):
    """No event in the log has this id."""

    code = "event_not_found"


class WebhookNotFound(OutlastError):
    """No incoming webhook endpoint with this name or id in the environment."""

    code = "webhook_not_found"


class InvalidState(OutlastError):
    """The object is not in a state that allows this."""

    code = "invalid_state"


class NonDeterminismError(OutlastError):
    """The task's code no longer matches the run's journal."""

    code = "non_determinism"


class SerializationError(OutlastError):
    """A value could not be stored as JSON."""

    code = "serialization_error"


# Never raised (a timeout ends the attempt by cancelling it, or by the watchdog's
# interrupt): its code is the one a TIMED_OUT run's error carries (the worker writes it
# from here), and docs/reference/statuses.md names it.
class TaskTimeout(OutlastError):
    """The run exceeded its max_duration."""

    code = "max_duration_exceeded"


class RunFailedError(OutlastError):
    """The run did not complete."""

    code = "run_failed"


class AbortRun(OutlastError):
    """Fail the run now, without retrying."""

    code = "aborted"


class QueueNotFound(OutlastError):
    """No queue has this name."""

    code = "queue_not_found"


class TokenNotFound(OutlastError):
    """No waitpoint token has this id."""

    code = "token_not_found"


class TokenTimedOut(OutlastError):
    """The waitpoint token timed out before it was completed."""

    code = "token_timed_out"


class ScheduleNotFound(OutlastError):
    """No schedule has this id."""

    code = "schedule_not_found"


class BulkActionNotFound(OutlastError):
    """No bulk action has this id."""

    code = "bulk_action_not_found"


class RetentionPolicyNotFound(OutlastError):
    """No retention policy is set for this task."""

    code = "retention_policy_not_found"
