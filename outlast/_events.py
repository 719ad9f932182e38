"""Events: publishing, subscriptions and the planner the store consults.

``publish`` validates events at the edge and hands them to the store, which fans each one
out in a single transaction (``store/_events_base.py``). Who subscribes is read from the
task definitions workers published (``spec["events"]``, a ``Subscription`` built
from ``@task(on=..., if_=..., cancel_on=..., replay=...)``), so an app or a server that
never imported task code fans out the same way a worker would.

Filters and matches are CEL (``celpy``, from the ``cel-python`` package), evaluated where
the event is accepted, over ``event`` = ``{"id", "name", "data", "ts"}``. Expressions are
compiled when a task is defined (a bad one fails the import, naming the field) and cached
by text wherever they are evaluated.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from . import _limits, _serde
from ._config import _float, settings
from ._errors import ConfigurationError, ValidationError
from ._events_fanout import plain_fanouts, template
from ._ids import new_id, new_ids
from ._trigger import _check_schema, check_payload_size
from .store._events_base import (
    EventPlanner,
    EventRecord,
    EventWait,
    Fanout,
    NewEvent,
    PublishResult,
    run_metadata,
)
from .store._groups_base import BATCH, RunGroup
from .store._match import ABSENT, value_at
from .store.base import NewRun, Store, TaskDef

DEFAULT_DEDUP_SECONDS = 24 * 3600.0
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600.0
_NAME = re.compile(r"[A-Za-z0-9][\w.:/-]{0,127}")
_PATTERN = re.compile(r"[A-Za-z0-9*][\w.:/*-]{0,127}")
REPLAY_CHOICES = ("new", "retained")


def dedup_seconds() -> float:
    """How long an event id deduplicates (OUTLAST_EVENT_DEDUP_SECONDS, default 24 h)."""
    return _float("OUTLAST_EVENT_DEDUP_SECONDS", DEFAULT_DEDUP_SECONDS)


def retention_seconds() -> float:
    """How long events stay in the log (OUTLAST_EVENT_RETENTION_SECONDS, default 7 days);
    never shorter than the deduplication window."""
    return max(_float("OUTLAST_EVENT_RETENTION_SECONDS", DEFAULT_RETENTION_SECONDS),
               dedup_seconds())


# -- CEL ------------------------------------------------------------------------------------

_programs: dict[str, Any] = {}


def compile_expr(expr: str, field: str) -> Any:
    """A compiled CEL program (cached by text); a bad expression is a ConfigurationError
    naming ``field``."""
    program = _programs.get(expr)
    if program is not None:
        return program
    import celpy

    env = celpy.Environment()
    try:
        program = env.program(env.compile(expr))
    except Exception as exc:  # celpy raises its own parse errors, with a caret diagram
        raise ConfigurationError(f"{field}: invalid CEL expression {expr!r}: {exc}",
                                 field=field) from None
    if len(_programs) > 1024:
        _programs.clear()
    _programs[expr] = program
    return program


def evaluate(expr: str, event: dict[str, Any]) -> bool:
    """Whether ``expr`` is true for ``event``; raises ValueError saying why it could not
    be evaluated (a missing field, a type mismatch)."""
    return _evaluate(expr, _cel_event(event))


# -- names, paths, patterns -----------------------------------------------------------------


def check_name(name: Any, field: str = "name") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError(
            f"{field}: an event name is 1-128 letters, digits and . _ : / - "
            f"(starting with a letter or digit), not {name!r}", field=field)
    return name


def check_pattern(pattern: Any, field: str = "on") -> str:
    if not isinstance(pattern, str) or not _PATTERN.fullmatch(pattern):
        raise ConfigurationError(f"{field}: invalid event name or pattern {pattern!r}",
                                 field=field)
    return pattern


def name_matches(pattern: str, name: str) -> bool:
    """``user.*`` matches ``user.signup`` and ``user.a.b``; ``*`` matches every name."""
    if "*" not in pattern:
        return pattern == name
    return _glob(pattern).fullmatch(name) is not None


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(p) for p in pattern.split("*")))


def check_path(path: Any, field: str = "match") -> str:
    if not isinstance(path, str) or not re.fullmatch(r"data(\.[\w-]+)+", path):
        raise ConfigurationError(
            f"{field}: a match is a path into the event's data such as 'data.user_id', "
            f"not {path!r}", field=field)
    return path


_ABSENT: Any = ABSENT


# -- subscriptions (@task) ------------------------------------------------------------------


@dataclass(frozen=True)
class CancelOn:
    """Cancel the task's unfinished runs when an event named ``event`` arrives whose value
    at ``match`` (``data.user_id``) equals the run's payload there (``payload.user_id``);
    ``if_`` (CEL over ``event``) narrows which events count."""

    event: str
    match: str | None = None
    if_: str | None = None

    def __post_init__(self) -> None:
        check_pattern(self.event, "cancel_on.event")
        if self.match is not None:
            check_path(self.match, "cancel_on.match")
        if self.if_ is not None:
            compile_expr(self.if_, "cancel_on.if_")
        if self.match is None and self.if_ is None:
            raise ConfigurationError(
                "cancel_on: give match= (or if_=), or every run of the task would be "
                "cancelled by any such event", field="cancel_on")

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event, "match": self.match, "if": self.if_}


@dataclass(frozen=True)
class Subscription:
    """What a task does with events: the names and patterns it runs on, its filter, where
    a new subscriber starts, and what cancels its runs. Published as ``spec["events"]``
    (``to_spec``), read back by any publisher (``from_spec``). ``group`` debounces or
    batches its runs (``_debounce``; its key is an expression over the event)."""

    on: tuple[str, ...] = ()
    if_: str | None = None
    replay: str = "new"
    cancel_on: tuple[CancelOn, ...] = ()
    group: RunGroup | None = None

    @classmethod
    def build(cls, on: str | Sequence[str] | None, if_: str | None,
              cancel_on: Sequence[CancelOn], replay: str,
              group: RunGroup | None = None) -> Subscription | None:
        """From ``@task``'s arguments, every one checked now (a bad one fails the import
        naming its field); None when the task has nothing to do with events."""
        names = (on,) if isinstance(on, str) else tuple(on or ())
        for n in names:
            check_pattern(n, "on")
        if if_ is not None:
            if not names:
                raise ConfigurationError("if_ filters events: give on= too", field="if_")
            compile_expr(if_, "if_")
        if replay not in REPLAY_CHOICES:
            raise ConfigurationError(
                f"replay must be one of {REPLAY_CHOICES}, not {replay!r}", field="replay")
        for c in cancel_on:
            if not isinstance(c, CancelOn):
                raise ConfigurationError("cancel_on takes CancelOn(...) items",
                                         field="cancel_on")
        if group is not None:
            check_group_key(group, bool(names))
        if not names and not cancel_on:
            return None
        return cls(names, if_, replay, tuple(cancel_on), group)

    def to_spec(self) -> dict[str, Any]:
        return {"on": list(self.on), "if": self.if_, "replay": self.replay,
                "cancel_on": [c.to_dict() for c in self.cancel_on],
                **({"group": self.group.to_spec()} if self.group else {})}

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> Subscription:
        """A published subscription (no events: an empty one). Not checked again: the
        worker that published it checked it, and a filter that cannot be compiled
        counts as not matching, with the reason in the event's log."""
        spec = spec or {}
        cancels = []
        for c in spec.get("cancel_on") or ():
            cancel = object.__new__(CancelOn)  # no __post_init__: see above
            object.__setattr__(cancel, "event", c["event"])
            object.__setattr__(cancel, "match", c.get("match"))
            object.__setattr__(cancel, "if_", c.get("if"))
            cancels.append(cancel)
        return cls(tuple(spec.get("on") or ()), spec.get("if"), spec.get("replay") or "new",
                   tuple(cancels), RunGroup.from_spec(spec.get("group")))

    def runs_on(self, name: str) -> bool:
        return any(name_matches(p, name) for p in self.on)


# -- the planner ----------------------------------------------------------------------------


class _Known:
    """What planners worked out about one published task definition: its subscription,
    its blank run, which event names it runs on and which of its cancel_on entries each
    name meets. Kept while the store hands out the same ``TaskDef`` object, as its
    subscriber cache does until the definitions change (``_sql_events._subscribers``)."""

    __slots__ = ("cancels", "names", "sub", "td", "template")

    def __init__(self, td: TaskDef) -> None:
        self.td = td
        self.sub = Subscription.from_spec(td.spec.get("events"))
        self.template: NewRun | None = None
        self.names: dict[str, bool] = {}
        self.cancels: dict[str, tuple[CancelOn, ...]] = {}


_known: dict[tuple[int, str], _Known] = {}  # (id(td), env): the entry holds td, so no reuse


def _about(td: TaskDef, env: str) -> _Known:
    known = _known.get((id(td), env))
    if known is None or known.td is not td:
        if len(_known) > 4096:
            _known.clear()
        known = _known[(id(td), env)] = _Known(td)
    return known


_F = TypeVar("_F")
# What planners worked out about one list of subscribers, by (id(list), env): the plain
# subscribers per event name, and those with a cancel_on (``Planner``).
_Plain = dict[str, tuple[_Known, ...] | None]
_plain_by_list: dict[tuple[int, str], tuple[Sequence[TaskDef], _Plain]] = {}
_cancel_by_list: dict[tuple[int, str], tuple[Sequence[TaskDef], list[TaskDef]]] = {}


def _runs_on(known: _Known, name: str) -> bool:
    """Whether the task runs on events named ``name`` (remembered per definition)."""
    hit = known.names.get(name)
    if hit is None:
        if len(known.names) > 1024:
            known.names.clear()
        hit = known.names[name] = known.sub.runs_on(name)
    return hit


def _facts(cache: dict[tuple[int, str], tuple[Sequence[TaskDef], _F]],
           subscribers: Sequence[TaskDef], env: str, make: Callable[[], _F]
           ) -> tuple[Sequence[TaskDef], _F]:
    """``cache``'s entry for ``subscribers``, made if new. Shared by every planner, each
    of which lives for one publish: the store hands each one the same list until the
    definitions change (``_sql_events._subscribers``). The entry holds the list, so its
    id is not reused while the entry stands."""
    key = (id(subscribers), env)
    found = cache.get(key)
    if found is None or found[0] is not subscribers:
        if len(cache) > 64:
            cache.clear()
        found = cache[key] = (subscribers, make())
    return found


def _cel_event(envelope: dict[str, Any]) -> dict[str, Any]:
    """The activation of a CEL program over ``event`` (converted once per event)."""
    from celpy.adapter import json_to_cel

    return {"event": json_to_cel(envelope)}


def _evaluate(expr: str, activation: dict[str, Any]) -> bool:
    from celpy import celtypes
    from celpy.evaluation import CELEvalError

    program = compile_expr(expr, "if_")
    try:
        result = program.evaluate(activation)
    except CELEvalError as exc:
        raise ValueError(str(exc.args[0] if exc.args else exc)) from None
    if not isinstance(result, celtypes.BoolType):
        raise ValueError(f"the expression gave {type(result).__name__}, not a bool")
    return bool(result)


class Planner(EventPlanner):
    """Decides, inside the store's publish transaction, what an event does. ``expected``
    is how many events it plans (sizes its batches of run ids)."""

    def __init__(self, env: str, expected: int = 16) -> None:
        self.env = env
        self._ids: list[str] = []
        self._id_batch = max(4, min(256, 4 * expected))
        self._with_cancel: tuple[Sequence[TaskDef], list[TaskDef]] | None = None
        # Per event name, the subscribers running on it when none filters, checks a
        # payload type or groups: a batch's events then skip the per-subscriber checks.
        self._plain: tuple[Sequence[TaskDef], dict[str, tuple[_Known, ...] | None]] | None = None

    def fan_out(
        self, event: EventRecord, subscribers: Sequence[TaskDef], *, replay: bool
    ) -> list[Fanout]:
        plain = self._plain_subscribers(subscribers, event.name)
        if plain is not None:
            if not plain:
                return []
            payload = _serde.dumps(event.data) if event.data_json is None else event.data_json
            metadata = run_metadata(event.id, event.name)
            return plain_fanouts(plain, payload, metadata, self.env, self._ids, self._id_batch)
        out: list[Fanout] = []
        activation: dict[str, Any] | None = None  # CEL's view of the event, built once
        shared: tuple[str, str] | None = None  # the runs' payload and metadata texts
        name = event.name
        for td in subscribers:
            known = _about(td, self.env)
            if not _runs_on(known, name):
                continue
            expr = known.sub.if_
            if expr:  # only subscribers with a filter, and only for names they run on
                try:
                    if activation is None:
                        activation = _cel_event(event.envelope())
                    matched = _evaluate(expr, activation)
                except (ValueError, ConfigurationError) as exc:
                    out.append(Fanout(td.id, "filtered", reason=f"if_ failed: {exc}"))
                    continue
                if not matched:
                    out.append(Fanout(td.id, "filtered", reason=f"if_ is false: {expr}"))
                    continue
            if shared is None:
                shared = (_serde.dumps(event.data) if event.data_json is None else
                          event.data_json, run_metadata(event.id, event.name))
            fan = self._run(known, event, *shared)
            group = known.sub.group
            out.append(fan if group is None else grouped(fan, group, event, td))
        return out

    def _plain_subscribers(self, subscribers: Sequence[TaskDef], name: str
                           ) -> tuple[_Known, ...] | None:
        """The subscribers running on ``name``, in order, if every one of them takes the
        event as it is (no if_, no payload type, no debounce or batch); else None."""
        cached = self._plain
        if cached is None or cached[0] is not subscribers:
            cached = self._plain = _facts(_plain_by_list, subscribers, self.env, dict)
        by_name = cached[1]
        if name in by_name:
            return by_name[name]
        found: list[_Known] = []
        for td in subscribers:
            known = _about(td, self.env)
            if not _runs_on(known, name):
                continue
            if known.sub.if_ or known.sub.group is not None or td.payload_schema:
                by_name[name] = None
                return None
            found.append(known)
        if len(by_name) > 1024:
            by_name.clear()
        by_name[name] = plain = tuple(found)
        return plain

    def _run(self, known: _Known, event: EventRecord, payload: str, metadata: str
             ) -> Fanout:
        # The run is created even when the data does not fit the task's payload type:
        # the event is never lost, and the run fails at its start with the validation
        # error (not retried), which the delivery's reason also names.
        td = known.td
        reason = None
        if td.payload_schema:
            try:
                _check_schema(td.payload_schema, event.data)
            except ValidationError as exc:
                reason = f"payload does not match the task's type: {exc.message}"
        blank = known.template or template(known, self.env)
        run = object.__new__(NewRun)  # a shallow copy (NewRun's fields are its __dict__)
        run.__dict__.update(blank.__dict__)
        if not self._ids:
            self._ids = new_ids("run", self._id_batch)  # a batch's ids at once (new_ids)
        run.id = self._ids.pop()
        run.payload = payload
        run.metadata = metadata
        run.tags = list(run.tags)
        fan = object.__new__(Fanout)  # as for the run: no frozen __init__, per run planned
        fan.__dict__.update(task_id=td.id, outcome="run", run=run, reason=reason)
        return fan

    def plain_runs(self, subscribers: Sequence[TaskDef], name: str
                   ) -> tuple[NewRun, ...] | None:
        plain = self._plain_subscribers(subscribers, name)
        if plain is None or any(name_matches(c.event, name) for td in self._cancellers(
                subscribers) for c in _about(td, self.env).sub.cancel_on):
            return None
        return tuple(template(known, self.env) for known in plain)

    def subscription(self, td: TaskDef) -> Subscription:
        return _about(td, self.env).sub

    def _cancellers(self, subscribers: Sequence[TaskDef]) -> Sequence[TaskDef]:
        """The tasks among ``subscribers`` with a cancel_on (a batch asks per event, with
        the same list)."""
        cached = self._with_cancel
        if cached is None or cached[0] is not subscribers:
            env = self.env
            cached = self._with_cancel = _facts(
                _cancel_by_list, subscribers, env,
                lambda: [td for td in subscribers if _about(td, env).sub.cancel_on])
        return cached[1]

    def cancel_matches(
        self, event: EventRecord, subscribers: Sequence[TaskDef]
    ) -> list[tuple[str, str, Any]]:
        out: list[tuple[str, str, Any]] = []
        envelope: dict[str, Any] | None = None
        activation: dict[str, Any] | None = None
        name = event.name
        for td in self._cancellers(subscribers):
            known = _about(td, self.env)
            cancels = known.cancels.get(name)
            if cancels is None:
                if len(known.cancels) > 1024:
                    known.cancels.clear()
                cancels = known.cancels[name] = tuple(
                    c for c in known.sub.cancel_on if name_matches(c.event, name))
            for c in cancels:
                if envelope is None:
                    envelope = event.envelope()
                if c.if_:
                    try:
                        if activation is None:
                            activation = _cel_event(envelope)
                        if not _evaluate(c.if_, activation):
                            continue
                    except (ValueError, ConfigurationError):
                        continue
                path = c.match
                if path is None:
                    out.append((td.id, "", None))  # every unfinished run (if_ only)
                    continue
                value = value_at(envelope, path.split("."))
                if value is not _ABSENT and value is not None:
                    out.append((td.id, path, value))
        return out

    def payload_at(self, payload_text: str, path: str) -> Any:
        if not path:
            return None
        found = value_at(_serde.loads(payload_text), path.split(".")[1:])
        return None if found is _ABSENT else found

    def wait_matches(self, event: EventRecord, wait: EventWait) -> bool:
        envelope = event.envelope()
        if wait.expr:
            try:
                return evaluate(wait.expr, envelope)
            except (ValueError, ConfigurationError):
                return False
        if wait.match_path is None:
            return True
        found = value_at(envelope, wait.match_path.split("."))
        return found is not _ABSENT and found == _serde.loads(wait.match_value)


# -- publishing -----------------------------------------------------------------------------


def new_event(name: Any, data: Any, event_id: Any = None, *, field: str = "",
              windows: tuple[float, float] | None = None,
              limit: int | None = None) -> NewEvent:
    """Validate one event at the edge; nothing is written if this raises. ``windows`` is
    (dedup, retention) seconds and ``limit`` the largest data in bytes, read from the
    settings when None (a batch reads them once)."""
    prefix = f"{field}." if field else ""
    check_name(name, f"{prefix}name")
    if event_id is None:
        event_id = new_id("evt")
    elif not isinstance(event_id, str) or not event_id:
        raise ValidationError(f"{prefix}id must be a non-empty string", field=f"{prefix}id")
    else:
        _limits.text(event_id, f"{prefix}id")
    text = _serde.to_json(data)
    check_payload_size(text, settings().max_payload_bytes if limit is None else limit)
    dedup, retention = windows or (dedup_seconds(), retention_seconds())
    # Its fields set at once: the frozen __init__'s setattr per field was a third of a
    # batch's validation (tests/test_events_copy.py checks it equals the constructor's).
    event = object.__new__(NewEvent)
    event.__dict__.update(id=event_id, name=name, data=text, dedup_seconds=dedup,
                          retention_seconds=retention)
    return event


def publish(store: Store, env: str, events: Sequence[NewEvent]) -> list[PublishResult]:
    """Publish validated events through the store (one transaction)."""
    if not events:
        return []
    return store.publish_events(env, events, Planner(env, len(events)))


def deliver_retained(store: Store, env: str, task_ids: Iterable[str]) -> int:
    """At worker start: the retained history for subscribers that asked for it."""
    return sum(store.deliver_retained(env, t, Planner(env)) for t in task_ids)


def retained_subscribers(definitions: Iterable[TaskDef]) -> list[str]:
    return [d.id for d in definitions
            if Subscription.from_spec(d.spec.get("events")).replay == "retained"]


def event_json(record: EventRecord) -> dict[str, Any]:
    """An event as the HTTP API and the CLI show it."""
    return {
        **record.envelope(),
        "deliveries": [
            {"task_id": d.task_id, "outcome": d.outcome, "run_id": d.run_id,
             "reason": d.reason, "replay": d.replay}
            for d in record.deliveries
        ],
    }


# -- debounce and batch (issue 20, part 5; the store's side is store/_sql_groups.py) --------

_PATH = re.compile(r"data(\.[\w-]+)+")


def check_group_key(group: RunGroup, has_names: bool) -> None:
    """A subscriber's debounce or batch key: a path into the event (``data.account_id``)
    or a CEL expression over ``event``; a bad one is a ConfigurationError naming it."""
    if not has_names:
        raise ConfigurationError(f"{group.kind} applies to the task's events: give on= too",
                                 field=group.kind)
    if group.key and not _PATH.fullmatch(group.key):
        compile_expr(group.key, f"{group.kind}.key")


def group_key(expr: str, envelope: dict[str, Any]) -> str:
    """The key an event has under ``expr``; "" when it has none (events without a value
    there share one group). A long value is hashed to fit an index row."""
    if not expr:
        return ""
    if _PATH.fullmatch(expr):
        value = value_at(envelope, expr.split("."))
    else:
        from celpy.adapter import json_to_cel

        try:
            value = compile_expr(expr, "key").evaluate({"event": json_to_cel(envelope)})
        except Exception:  # a missing field or a type error: no key
            value = _ABSENT
    if value is _ABSENT or value is None:
        return ""
    text = value if isinstance(value, str) else _serde.dumps(value)
    if len(text.encode()) > _limits.MAX_KEY_BYTES:
        import hashlib

        text = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return str(text)


def grouped(fan: Fanout, group: RunGroup, event: EventRecord, td: TaskDef) -> Fanout:
    """A subscriber's run joining its group: debounced (the last event's data replaces a
    pending run's) or batched (the event's data appended to the pending batch)."""
    run = fan.run
    if run is None:
        return fan
    reason = fan.reason
    if group.kind == BATCH:  # the task takes a list: each event is one item of it
        reason = None
        try:
            _check_schema(td.payload_schema, [event.data])
        except ValidationError as exc:
            reason = f"payload does not match the task's type: {exc.message}"
    run.group = RunGroup(group.kind, group_key(group.key, event.envelope()), group.period,
                         group.timeout, group.mode, group.max_size)
    return Fanout(fan.task_id, "batched" if group.kind == BATCH else "debounced",
                  run=run, reason=reason)
