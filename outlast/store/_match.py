"""Values at dotted paths and their canonical text: shared by the event planner
(``outlast/_events``, which matches events to waits and cancels) and the store, which keeps the
cancel_on match keys of each run (``run_cancel_keys``) so an event cancels by an index
lookup. No imports from the rest of outlast: the store uses it too."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

ABSENT: Any = object()


def value_at(value: Any, parts: Iterable[str]) -> Any:
    """The value at a dotted path (list indices as digits); ``ABSENT`` if there is none."""
    for part in parts:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return ABSENT
    return value


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 1.0 == 1 in Python, so the same key
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def match_key(value: Any) -> str:
    """A value's canonical JSON text: equal values (as Python's == sees JSON values) give
    equal keys, whatever their key order or 1 against 1.0."""
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)


def cancel_paths(events_spec: dict[str, Any] | None) -> tuple[str, ...]:
    """The match paths (``data.user_id``) of a task's cancel_on entries, from its
    published ``spec["events"]``."""
    if not events_spec:
        return ()
    return tuple(dict.fromkeys(
        str(c["match"]) for c in events_spec.get("cancel_on") or () if c.get("match")))


def payload_keys(paths: Sequence[str], payload: Any) -> list[tuple[str, str]]:
    """(path, key) for each cancel_on path with a value in the run's payload (the event's
    ``data.x`` is the payload's ``x``)."""
    out: list[tuple[str, str]] = []
    for path in paths:
        found = value_at(payload, path.split(".")[1:])
        if found is not ABSENT and found is not None:
            out.append((path, match_key(found)))
    return out
