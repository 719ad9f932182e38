"""Template filters: times, durations, JSON."""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

NONE = "\u2013"  # an en dash: "no value"

# Large payloads are shown cut: the page must stay light whatever a run carries.
MAX_JSON_CHARS = 100_000


def duration(seconds: float | None) -> str:
    """``123 ms``, ``4.2 s``, ``3m 05s``, ``2h 07m``, ``3d 4h``."""
    if seconds is None:
        return NONE
    s = max(0.0, float(seconds))
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    if s < 86400:
        return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"
    return f"{int(s // 86400)}d {int(s % 86400 // 3600)}h"


def iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat(timespec="milliseconds")


def when(ts: float | None) -> str:
    """A readable UTC time; the page's script turns it into local time."""
    if ts is None:
        return NONE
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pretty(value: Any) -> str:
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > MAX_JSON_CHARS:
        return text[:MAX_JSON_CHARS] + f"\n… ({len(text) - MAX_JSON_CHARS:,} more characters)"
    return text


def compact(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


STATUS_CLASS = {
    "DELAYED": "delayed",
    "QUEUED": "queued",
    "DEQUEUED": "queued",
    "EXECUTING": "executing",
    "WAITING": "waiting",
    "COMPLETED": "ok",
    "FAILED": "failed",
    "CANCELED": "canceled",
    "EXPIRED": "expired",
    "TIMED_OUT": "failed",
}


def status_class(status: Any) -> str:
    return STATUS_CLASS.get(str(status), "queued")


def token_buttons(token: Any) -> list[tuple[str, str]]:
    """A token's completion buttons as (label, the JSON each sends)."""
    from ... import _token_buttons

    return [(label, json.dumps(data)) for label, data in _token_buttons.of(token).items()]


FILTERS = {
    "token_buttons": token_buttons,
    "duration": duration,
    "iso": iso,
    "when": when,
    "pretty": pretty,
    "compact": compact,
    "status_class": status_class,
}
