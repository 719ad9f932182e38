"""``Debounce`` and ``Batch``: keeping bursts cheap (issue 20, part 5).

``Debounce`` turns a burst of triggers or events for one key into one run: the run is
DELAYED, each new trigger for the key within ``period`` replaces its payload (the last
one wins; ``mode="leading"`` keeps the first) and pushes its start to ``period`` after
itself, and ``timeout`` caps how long a burst may postpone it from its first trigger
(Inngest's ``debounce``; Trigger.dev 4.3's ``debounce: {key, delay, mode, maxDelay}``,
whose names ``delay`` and ``max_delay`` are accepted too). Once the run has been promoted
to start, the next trigger starts a new burst.

``Batch`` gathers a subscriber's events into one run whose payload is their list: the
run starts when ``max_size`` events are in, or ``timeout`` after the first.

Both are checked here when they are made (a bad one fails naming its field, nothing is
written); a subscriber's ``key`` is an expression over the event, checked by
``_events.Subscription.build``; a trigger's is the key itself, checked by
``_trigger.build_run``. The store keeps the groups (``store/_sql_groups.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from . import _limits
from ._errors import ConfigurationError, ValidationError
from .store._groups_base import BATCH, DEBOUNCE, LEADING, TRAILING, RunGroup

MAX_PERIOD = 7 * 86400.0  # a debounce's period and timeout (Inngest: 1 s to 7 days)
MAX_BATCH_TIMEOUT = 86400.0
MAX_BATCH_SIZE = 1000
MODES = (TRAILING, LEADING)


def _seconds(value: timedelta | float | int | None, field: str, high: float) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValidationError(f"{field} must be seconds or a timedelta", field=field)
    if not 0 < seconds <= high:
        raise ValidationError(
            f"{field} must be more than 0 and at most {high:g} seconds, not {seconds!r}",
            field=field)
    return float(seconds)


@dataclass(frozen=True, init=False)
class Debounce:
    """One run per burst of triggers (or events) sharing ``key``; see the module docstring.

    On ``@task(debounce=...)`` the key is a path into the event (``"data.account_id"``)
    or a CEL expression over ``event``; on ``trigger(..., debounce=...)`` it is the key
    itself (``f"user-{user.id}"``)."""

    key: str
    period: float
    timeout: float | None
    mode: str

    def __init__(
        self,
        key: str,
        period: timedelta | float | None = None,
        timeout: timedelta | float | None = None,
        *,
        delay: timedelta | float | None = None,
        max_delay: timedelta | float | None = None,
        mode: str = TRAILING,
    ) -> None:
        if not isinstance(key, str) or not key:
            raise ValidationError("debounce.key must be a non-empty string",
                                  field="debounce.key")
        if period is not None and delay is not None:
            raise ValidationError("debounce: give period or delay (the same thing), not both",
                                  field="debounce.period")
        if timeout is not None and max_delay is not None:
            raise ValidationError(
                "debounce: give timeout or max_delay (the same thing), not both",
                field="debounce.timeout")
        quiet = _seconds(period if period is not None else delay, "debounce.period",
                         MAX_PERIOD)
        if quiet is None:
            raise ValidationError("debounce.period (or delay) is required",
                                  field="debounce.period")
        cap = _seconds(timeout if timeout is not None else max_delay, "debounce.timeout",
                       MAX_PERIOD)
        if mode not in MODES:
            raise ValidationError(f"debounce.mode must be one of {MODES}, not {mode!r}",
                                  field="debounce.mode")
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "period", quiet)
        object.__setattr__(self, "timeout", cap)
        object.__setattr__(self, "mode", mode)

    def group(self, key: str | None = None) -> RunGroup:
        return RunGroup(DEBOUNCE, self.key if key is None else key, self.period,
                        self.timeout, self.mode)


@dataclass(frozen=True, init=False)
class Batch:
    """Gather a subscriber's events into one run: its payload is the list of their data
    (annotate it ``list[YourEvent]``). It starts with ``max_size`` events, or ``timeout``
    after the first; with ``key`` (a path or CEL expression, as for ``Debounce``) each key
    gathers its own batch."""

    max_size: int
    timeout: float
    key: str | None

    def __init__(self, max_size: int = 100, timeout: timedelta | float = 10.0,
                 key: str | None = None) -> None:
        size = _limits.integer(max_size, "batch.max_size", low=1, high=MAX_BATCH_SIZE)
        seconds = _seconds(timeout, "batch.timeout", MAX_BATCH_TIMEOUT)
        if key is not None and (not isinstance(key, str) or not key):
            raise ValidationError("batch.key must be a non-empty string", field="batch.key")
        object.__setattr__(self, "max_size", size)
        object.__setattr__(self, "timeout", seconds)
        object.__setattr__(self, "key", key)

    def group(self) -> RunGroup:
        return RunGroup(BATCH, self.key or "", self.timeout, max_size=self.max_size)


def task_group(debounce: Debounce | None, batch: Batch | None) -> RunGroup | None:
    """The group ``@task(debounce=..., batch=...)`` asks for (one at most)."""
    if debounce is not None and batch is not None:
        raise ConfigurationError("a task debounces or batches its events, not both",
                                 field="batch")
    if debounce is not None and not isinstance(debounce, Debounce):
        raise ConfigurationError("debounce takes Debounce(...)", field="debounce")
    if batch is not None and not isinstance(batch, Batch):
        raise ConfigurationError("batch takes Batch(...)", field="batch")
    if debounce is not None:
        return debounce.group()
    return batch.group() if batch is not None else None
