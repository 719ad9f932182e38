"""Durations and times as the API accepts them: seconds, "1h52m18s"-style strings, or
ISO 8601 dates (a moment rather than a span)."""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

from .._errors import ValidationError
from .._limits import MAX_SECONDS as MAX_SECONDS

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def seconds_from(value: Any, field: str, now: float) -> float | None:
    """Seconds from ``now``: a number of seconds, "10m", "1h30m", or an ISO date."""
    seconds = _seconds_from(value, field, now)
    if seconds is not None and not 0 <= seconds <= MAX_SECONDS:  # also NaN and infinity
        raise ValidationError(f"{field} must be at most 100 years", field=field)
    return seconds


def _seconds_from(value: Any, field: str, now: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValidationError(f"{field} must be seconds, a duration like '10m', or a date",
                              field=field)
    if isinstance(value, int | float):
        if value < 0:
            raise ValidationError(f"{field} must not be negative", field=field)
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+", text):
            return sum(float(n) * _UNIT[u] for n, u in _PART.findall(text))
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return float(text)
        try:
            moment = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=_dt.UTC)
            return max(0.0, moment.timestamp() - now)
    raise ValidationError(
        f"{field} must be seconds, a duration like '10m' or '1h30m', or an ISO 8601 date",
        field=field,
    )


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    try:
        moment = _dt.datetime.fromtimestamp(ts, _dt.UTC)
    except (ValueError, OverflowError, OSError):  # stored by a client that skipped checks
        return "9999-12-31T23:59:59.999Z" if ts > 0 else "0001-01-01T00:00:00.000Z"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
