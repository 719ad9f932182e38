"""The limits on the keys, names and numbers a caller hands in, checked in one place.

Every path that builds a run, a token or a queue change (the Python client, the HTTP API,
the Trigger.dev routes) passes those values through here before anything is written. The
database would otherwise refuse some of them mid-write (a NUL in PostgreSQL text, a key
longer than an index row holds, an integer wider than its column: a 500) and take others
that then misbehave (a NaN priority that never sorts, so the run is never claimed; JSON
``true`` read as 1 second). A ValidationError names the field and the reason instead.
docs/reference/limits.md lists them.
"""

from __future__ import annotations

import math
from typing import Any

from ._errors import ValidationError

# Keys are stored in unique indexes, whose PostgreSQL btree row holds about 2.7 KB: a
# limit in UTF-8 bytes, well under it, for every backend alike.
MAX_KEY_BYTES = 512  # idempotency keys, concurrency keys, token keys, request keys
MAX_NAME_BYTES = 255  # queue names
MAX_TAG_CHARS = 128
MAX_TAGS = 10
MAX_INT = 2**31 - 1  # queue limits: INTEGER columns
# Delays, TTLs, durations, a priority's head start: longer than any wait makes sense,
# short enough that every moment it yields is a date (a timestamp past year 9999 cannot
# be written in ISO 8601: a 500 on every later read).
MAX_SECONDS = 100 * 365 * 86400.0
MAX_ID = 2**53  # event ids and other cursors: exact in a JSON number


def text(value: Any, field: str, *, max_bytes: int = MAX_KEY_BYTES) -> str:
    """A non-empty string with no NUL, at most ``max_bytes`` in UTF-8."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string", field=field)
    if not value:
        raise ValidationError(f"{field} must not be empty", field=field)
    if "\x00" in value:
        raise ValidationError(f"{field} must not contain a NUL character", field=field)
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise ValidationError(
            f"{field} is not valid Unicode text (a lone surrogate)", field=field
        ) from None
    if size > max_bytes:
        raise ValidationError(
            f"{field} is {size} bytes in UTF-8; the limit is {max_bytes}", field=field
        )
    return value


def number(value: Any, field: str, *, low: float, high: float) -> float:
    """A finite number (not a boolean) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{field} must be a number", field=field)
    if not math.isfinite(value):
        raise ValidationError(f"{field} must be a finite number", field=field)
    if not low <= value <= high:
        raise ValidationError(f"{field} must be between {low:g} and {high:g}", field=field)
    return float(value)


def integer(value: Any, field: str, *, low: int = 0, high: int = MAX_INT) -> int:
    """An integer (not a boolean; a float only if whole) in [low, high]."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{field} must be an integer", field=field)
    if not low <= value <= high:
        raise ValidationError(f"{field} must be between {low} and {high}", field=field)
    return value


def seconds(value: Any, field: str) -> float:
    """A duration in seconds: finite, 0 to 100 years."""
    return number(value, field, low=0.0, high=MAX_SECONDS)


def tags(values: Any, field: str = "tags") -> list[str]:
    """At most MAX_TAGS distinct tags, each 1 to MAX_TAG_CHARS characters, no NUL."""
    if isinstance(values, str) or not isinstance(values, list | tuple):
        raise ValidationError(f"{field} must be a list of strings", field=field)
    for t in values:
        text(t, field, max_bytes=4 * MAX_TAG_CHARS)
        if len(t) > MAX_TAG_CHARS:
            raise ValidationError(
                f"a tag is a string of 1 to {MAX_TAG_CHARS} characters", field=field
            )
    out = list(dict.fromkeys(values))
    if len(out) > MAX_TAGS:
        raise ValidationError(f"at most {MAX_TAGS} tags per run", field=field)
    return out
