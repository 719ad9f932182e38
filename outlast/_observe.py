"""The runtime's observation points: where metrics (``_metrics``) and traces (``_tracing``)
hear of triggers, claims, attempts, steps, runs that ended outside a worker, lost leases
and reaped workers.

Each call site reads ``OBSERVERS`` first and calls in only when someone observes, so a
process with neither metrics nor tracing on pays one list check per point. Observers
never change what the runtime does: an observer that raises is logged and skipped.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .durable import RunContext
    from .runs import JournalEntry, Run
    from .store.base import Claim, EndSegment, NewRun, WorkerStore

log = logging.getLogger("outlast.observe")


class Observer:
    """Override what you need; every point is a no-op here."""

    def triggered(self, run: NewRun) -> None:
        """A run was built to be triggered in this process (any trigger path)."""

    def claimed(self, claims: Sequence[Claim], now: float) -> None:
        """A claim batch arrived at a worker."""

    async def attempt_started(self, ctx: RunContext, resumed: bool) -> None:
        """A segment of an attempt is about to run the task's code, in its asyncio task."""

    def attempt_ended(
        self, ctx: RunContext, op: EndSegment | None, exc: BaseException | None
    ) -> None:
        """The segment ended: ``op`` is what the worker commits (None: the lease was lost),
        ``exc`` what the task's code raised, if anything."""

    def step_cached(self, ctx: RunContext, key: str, entry: JournalEntry) -> None:
        """A step's recorded result was returned on replay."""

    def step_started(self, ctx: RunContext, key: str) -> Any:
        """A step's body starts, in the branch that runs it; returns what step_ended gets."""
        return None

    def step_ended(
        self, ctx: RunContext, key: str, seen: Any, seconds: float, exc: BaseException | None
    ) -> None:
        """A step's body returned (``exc`` None) or raised."""

    async def run_ended_elsewhere(self, store: WorkerStore, run: Run) -> None:
        """A run that ended outside any worker (cancelled while queued or waiting, expired,
        failed with a lost worker) was taken by this worker, once in the fleet."""

    def lease_lost(self, runs: int) -> None:
        """This worker lost its lease or life lock, abandoning ``runs`` attempts."""

    def workers_reaped(self, n: int) -> None:
        """A reaper in this process declared ``n`` dead workers."""

    def webhook_refused(self, scheme: str, reason: str) -> None:
        """An incoming webhook's signature was bad, missing or stale (nothing stored)."""

    def flush(self) -> None:
        """The worker is stopping: export what is buffered (blocking; run off the loop)."""

    def inject(self, headers: dict[str, str]) -> None:
        """An HTTP request to an outlast server is about to go: add trace headers."""

    def extract(self, headers: Mapping[str, str]) -> Any:
        """A request arrived at the server: make its trace context current; returns what
        ``detach`` gets once the request is done."""
        return None

    def detach(self, token: Any) -> None:
        """The request that ``extract`` made current is done."""


OBSERVERS: list[Observer] = []


def add(observer: Observer) -> None:
    if not any(type(o) is type(observer) for o in OBSERVERS):
        OBSERVERS.append(observer)


def remove(kind: type[Observer]) -> None:
    OBSERVERS[:] = [o for o in OBSERVERS if type(o) is not kind]


def _safe(name: str, *args: Any) -> list[Any]:
    results = []
    for o in OBSERVERS:
        try:
            results.append(getattr(o, name)(*args))
        except Exception:
            log.exception("observer %s failed at %s", type(o).__name__, name)
            results.append(None)
    return results


def triggered(run: NewRun) -> None:
    _safe("triggered", run)


def claimed(claims: Sequence[Claim], now: float) -> None:
    _safe("claimed", claims, now)


async def attempt_started(ctx: RunContext, resumed: bool) -> None:
    for o in list(OBSERVERS):
        if type(o).attempt_started is Observer.attempt_started:
            continue  # a coroutine per run for nothing (metrics do not need this point)
        try:
            await o.attempt_started(ctx, resumed)
        except Exception:
            log.exception("observer %s failed at attempt_started", type(o).__name__)


def attempt_ended(ctx: RunContext, op: EndSegment | None, exc: BaseException | None) -> None:
    _safe("attempt_ended", ctx, op, exc)


async def run_ended_elsewhere(store: WorkerStore, run: Run) -> None:
    for o in list(OBSERVERS):
        try:
            await o.run_ended_elsewhere(store, run)
        except Exception:
            log.exception("observer %s failed at run_ended_elsewhere", type(o).__name__)


def step_cached(ctx: RunContext, key: str, entry: JournalEntry) -> None:
    _safe("step_cached", ctx, key, entry)


class StepSeen:
    """A step's body being observed: ``end`` once it returned or raised."""

    def __init__(self, ctx: RunContext, key: str, began: float) -> None:
        self.ctx, self.key, self.began = ctx, key, began
        self.tokens = _safe("step_started", ctx, key)

    def end(self, exc: BaseException | None) -> None:
        seconds = time.monotonic() - self.began
        for o, token in zip(list(OBSERVERS), self.tokens, strict=False):
            try:
                o.step_ended(self.ctx, self.key, token, seconds, exc)
            except Exception:
                log.exception("observer %s failed at step_ended", type(o).__name__)


def step_started(ctx: RunContext, key: str) -> StepSeen:
    return StepSeen(ctx, key, time.monotonic())


def lease_lost(runs: int) -> None:
    _safe("lease_lost", runs)


def workers_reaped(n: int) -> None:
    _safe("workers_reaped", n)


def webhook_refused(scheme: str, reason: str) -> None:
    if OBSERVERS:
        _safe("webhook_refused", scheme, reason)


def flush() -> None:
    _safe("flush")


def inject(headers: dict[str, str]) -> None:
    _safe("inject", headers)


def extract(headers: Mapping[str, str]) -> list[Any]:
    return _safe("extract", headers)


def detach(tokens: list[Any]) -> None:
    for o, token in zip(list(OBSERVERS), tokens, strict=False):
        if token is not None:
            try:
                o.detach(token)
            except Exception:
                log.exception("observer %s failed at detach", type(o).__name__)


# -- turning tracing on (outlast._tracing needs outlast[otel]) --------------------------------


def env_wants(kind: str) -> bool:
    """Whether the standard OTEL_* variables ask for exporting ``kind`` (traces | logs)."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    chosen = env.get(f"OTEL_{kind.upper()}_EXPORTER")
    if chosen is not None:
        return chosen.strip().lower() not in ("", "none")
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get(f"OTEL_EXPORTER_OTLP_{kind.upper()}_ENDPOINT")
    )


def instrument(tracer_provider: Any = None, logger_provider: Any = None) -> None:
    """Trace runs in this process with OpenTelemetry, and export ``logger.*`` lines as
    OTel log records: ``outlast.instrument()``. Without arguments it uses the providers
    the app made global, else SDK ones exporting over OTLP/HTTP as the OTEL_* variables
    say. Needs ``pip install 'outlast[otel]'``."""
    try:
        from . import _tracing
    except ImportError as exc:
        from ._errors import ConfigurationError

        raise ConfigurationError(
            "tracing needs OpenTelemetry: pip install 'outlast[otel]'"
        ) from exc
    _tracing.instrument(tracer_provider, logger_provider)


_from_env_done = False


def from_environment() -> None:
    """Instrument once per process when the OTEL_* variables ask for traces (outlast's
    import, a worker's or a server's start); silent when they do not."""
    global _from_env_done
    if _from_env_done or not env_wants("traces"):
        return
    _from_env_done = True
    try:
        instrument()
    except Exception as exc:
        log.warning("OTEL_* variables are set but tracing is off: %s", exc)
