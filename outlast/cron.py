"""Cron expressions: parse, check, describe, and find the moments they name in a time zone.

Five fields, ``minute hour day-of-month month day-of-week``, each ``*``, a number, a range
``a-b``, a list ``a,b``, or a step ``*/n``, ``a-b/n``, ``a/n``; months ``JAN``..``DEC`` and
days ``SUN``..``SAT`` by name (0 and 7 are Sunday); and the shortcuts ``@yearly``
(``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``) and ``@hourly``.
As in Vixie cron, when both day fields are restricted a day matching either one matches.

A *slot* is the instant (epoch seconds) at which the schedule fires. Slots come from wall
clock times in the schedule's zone, and daylight saving time bends that mapping twice a
year. The policy, written for people in docs/how-to/schedules.md:

- An expression whose hour field is ``*`` or ``*/n`` repeats through the day, so it
  follows the clock on the wall: a local time that does not exist (spring forward) is no
  slot, and a local time that happens twice (fall back) is two slots, an hour apart.
- Any other expression names particular times of day, and each fires once per day: a
  skipped local time fires at the first instant after the gap (02:30 on a spring-forward
  night fires at 03:00), and a repeated one fires at its first occurrence only.

Slots are instants, so two wall times that land on one instant are one slot.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass

from ._errors import ValidationError

MINUTE = _dt.timedelta(minutes=1)
# A wall time this far before a moment can still fall after it (a repeated hour), and no
# zone moves its clocks by more; searches look this far around a candidate.
_WINDOW = _dt.timedelta(hours=3)
_YEARS = 9  # the longest gap between slots: Feb 29 across a skipped leap year (2100)

SHORTCUTS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
FIELD_NAMES = ("minute", "hour", "day-of-month", "month", "day-of-week")
_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # Feb 29 happens


class CronError(ValidationError):
    """The cron expression is invalid."""

    def __init__(self, message: str, *, cron_field: str | None = None) -> None:
        super().__init__(message, field="cron", cron_field=cron_field)
        self.cron_field = cron_field


@dataclass(frozen=True)
class Cron:
    """A parsed expression. Sets hold the allowed values; weekdays use 0 = Sunday."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: tuple[int, ...]
    weekdays: frozenset[int]
    dom_star: bool  # the day-of-month field starts with '*'
    dow_star: bool
    hour_star: bool  # the hour field starts with '*': the schedule follows the wall clock

    def day_matches(self, day: _dt.date) -> bool:
        dom = day.day in self.days
        dow = (day.weekday() + 1) % 7 in self.weekdays
        if self.dom_star or self.dow_star:
            return dom and dow
        return dom or dow

    def __str__(self) -> str:
        return self.expression


@functools.lru_cache(maxsize=4096)
def parse(expression: str) -> Cron:
    """Parse ``expression``; a CronError names the bad field."""
    if not isinstance(expression, str):
        raise CronError("a cron expression is a string like '0 9 * * MON'")
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text.lower() not in SHORTCUTS:
            raise CronError(
                f"unknown cron shortcut {text!r}; use one of {', '.join(sorted(SHORTCUTS))}"
            )
        return _parse_fields(text.lower(), SHORTCUTS[text.lower()].split())
    parts = text.split(" ") if text else []
    if len(parts) != 5:
        raise CronError(
            f"cron expression {text!r} has {len(parts)} fields; it needs 5 "
            "(minute hour day-of-month month day-of-week) or a shortcut like @daily"
        )
    return _parse_fields(text, parts)


def validate(expression: str) -> str:
    """The expression with its whitespace normalized, or a CronError naming the bad field."""
    return parse(expression).expression


def _parse_fields(text: str, parts: list[str]) -> Cron:
    sets = [
        _field(text, FIELD_NAMES[i], parts[i], *_BOUNDS[i], names)
        for i, names in enumerate((None, None, None, MONTHS, DAYS))
    ]
    minutes, hours, days, months, weekdays = sets
    weekdays = {0 if d == 7 else d for d in weekdays}
    dom_star, dow_star = parts[2].startswith("*"), parts[4].startswith("*")
    if dow_star and not any(d <= _MONTH_DAYS[m - 1] for m in months for d in days):
        raise CronError(
            f"invalid cron expression {text!r}: day-of-month field {parts[2]!r} never "
            f"occurs in the months of month field {parts[3]!r}",
            cron_field="day-of-month",
        )
    return Cron(
        expression=text,
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=frozenset(days),
        months=tuple(sorted(months)),
        weekdays=frozenset(weekdays),
        dom_star=dom_star,
        dow_star=dow_star,
        hour_star=parts[1].startswith("*"),
    )


def _field(
    text: str, name: str, spec: str, lo: int, hi: int, names: tuple[str, ...] | None
) -> set[int]:
    def bad(why: str) -> CronError:
        return CronError(
            f"invalid cron expression {text!r}: {name} field {spec!r}: {why}", cron_field=name
        )

    def value(token: str) -> int:
        if names is not None and token.upper() in names:
            return names.index(token.upper()) + (1 if names is MONTHS else 0)
        if not token.isdigit():
            hint = f" (or a name {names[0]}..{names[-1]})" if names else ""
            raise bad(f"{token!r} is not a number{hint}")
        number = int(token)
        if not lo <= number <= hi:
            raise bad(f"{number} is out of range {lo}-{hi}")
        return number

    top = 6 if name == "day-of-week" else hi  # '*' in day-of-week: 0-6 (7 is Sunday again)
    out: set[int] = set()
    for item in spec.split(","):
        if not item:
            raise bad("an empty list item")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise bad(f"step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            start, end = lo, top
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = value(first), value(last)
            if name == "day-of-week" and end == 0 < start:
                end = 7  # FRI-SUN
            if start > end:
                raise bad(f"range {base!r} runs backwards")
        else:
            start = value(base)
            end = top if slash else start  # '5/15' means 5-59/15
        out.update(range(start, end + 1, step))
    return out


# -- time zones -------------------------------------------------------------------------------


def zone(name: str | None) -> zoneinfo.ZoneInfo:
    """The IANA zone called ``name`` (UTC when None); a ValidationError names the field."""
    try:
        return zoneinfo.ZoneInfo(name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            f"unknown time zone {name!r}: use an IANA name like 'Europe/Paris' or 'UTC'",
            field="timezone",
        ) from None


@functools.cache
def timezones() -> list[str]:
    """Every IANA zone name this machine knows, sorted."""
    return sorted(zoneinfo.available_timezones())


# -- wall-clock times -------------------------------------------------------------------------


def _next_wall(c: Cron, w: _dt.datetime) -> _dt.datetime | None:
    """The first naive local minute at or after ``w`` that the expression matches."""
    end_year = w.year + _YEARS
    while w.year < end_year:
        if w.month not in c.months:
            later = [m for m in c.months if m > w.month]
            w = _dt.datetime(w.year, later[0], 1) if later else _dt.datetime(
                w.year + 1, c.months[0], 1
            )
        elif not c.day_matches(w.date()):
            w = _dt.datetime(w.year, w.month, w.day) + _dt.timedelta(days=1)
        elif w.hour not in c.hours:
            later = [h for h in c.hours if h > w.hour]
            if later:
                w = w.replace(hour=later[0], minute=0)
            else:
                w = _dt.datetime(w.year, w.month, w.day) + _dt.timedelta(days=1)
        elif w.minute not in c.minutes:
            later = [m for m in c.minutes if m > w.minute]
            if later:
                w = w.replace(minute=later[0])
            else:
                w = w.replace(minute=0) + _dt.timedelta(hours=1)
        else:
            return w
    return None


def _walls(c: Cron, start: _dt.datetime) -> Iterator[_dt.datetime]:
    w = _next_wall(c, start)
    while w is not None:
        yield w
        w = _next_wall(c, w + MINUTE)


def _offset(tz: _dt.tzinfo, ts: float) -> _dt.timedelta | None:
    return _dt.datetime.fromtimestamp(ts, tz).utcoffset()


def _instants(c: Cron, tz: _dt.tzinfo, w: _dt.datetime) -> list[float]:
    """The slots that the wall time ``w`` gives, per the DST policy above."""
    first = w.replace(tzinfo=tz, fold=0).timestamp()
    second = w.replace(tzinfo=tz, fold=1).timestamp()
    if first == second:
        return [first]
    if first < second:  # w happens twice (fall back): fold 0 is the earlier one
        return [first, second] if c.hour_star else [first]
    if c.hour_star:  # w never happens (spring forward)
        return []
    # The gap's end: the instant of the change. Before it the old offset applies, from it
    # the new one, and w under each offset lands on either side of it.
    return [float(_change(tz, int(second), int(first)))]


def _change(tz: _dt.tzinfo, lo: int, hi: int) -> int:
    """The first whole second in (lo, hi] whose UTC offset differs from lo's (bisection;
    the caller knows hi's differs)."""
    before = _offset(tz, lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset(tz, mid) == before:
            lo = mid
        else:
            hi = mid
    return hi


def _floor_wall(ts: float, tz: _dt.tzinfo) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ts, tz).replace(tzinfo=None, second=0, microsecond=0)


# -- slots ------------------------------------------------------------------------------------


def next_slot(c: Cron, tz: _dt.tzinfo, after: float) -> float | None:
    """The first slot strictly after the instant ``after`` (None if there is none)."""
    if c.hour_star:
        return _next_on_the_wall_clock(c, tz, after)
    # Fixed times of day: each wall time gives one slot, and later wall times never give
    # earlier slots (first occurrences and gap ends keep their order), so the first wall
    # time from ``after``'s own whose slot lies past ``after`` is the answer.
    for w in _walls(c, _floor_wall(after, tz)):
        slot = _instants(c, tz, w)[0]
        if slot > after:
            return slot
    return None


def _next_on_the_wall_clock(c: Cron, tz: _dt.tzinfo, after: float) -> float | None:
    # A slot is an instant whose local time matches. Walk real time: from x, the next
    # matching wall time W lies (W - local(x)) ahead unless the offset changes on the way;
    # if it does, no slot comes before the change, so go on from the change. No zone
    # changes its offset twice within a day, which the one-day bound relies on.
    x = math.floor(after) + 1
    for _ in range(4):
        here = _dt.datetime.fromtimestamp(x, tz)
        wall = here.replace(tzinfo=None)
        start = wall if wall.second == 0 and wall.microsecond == 0 else (
            wall.replace(second=0, microsecond=0) + MINUTE
        )
        w = _next_wall(c, start)
        if w is None:
            return None
        slot = x + int((w - wall).total_seconds())
        if slot - x > 86400:
            break  # a long way off: the general search below is cheap for sparse days
        if _offset(tz, slot) == here.utcoffset():
            return float(slot)
        x = _change(tz, x, slot)
    return _next_slot_near_change(c, tz, after, _floor_wall(after, tz))


def _next_slot_near_change(
    c: Cron, tz: _dt.tzinfo, after: float, base: _dt.datetime
) -> float | None:
    # The general search: every wall time from 3 h before ``after`` until 3 h past the
    # best slot found, as a repeated hour can put an earlier wall time after a later one.
    best: float | None = None
    best_wall = base
    for w in _walls(c, base - _WINDOW):
        if best is not None and w > best_wall + _WINDOW:
            break
        for instant in _instants(c, tz, w):
            if instant > after and (best is None or instant < best):
                best, best_wall = instant, w
    return best


def upcoming(c: Cron, tz: _dt.tzinfo, after: float, count: int) -> list[float]:
    """The next ``count`` slots strictly after ``after``."""
    out: list[float] = []
    while len(out) < count:
        following = next_slot(c, tz, out[-1] if out else after)
        if following is None:
            break
        out.append(following)
    return out


def latest_slot(c: Cron, tz: _dt.tzinfo, now: float, due: float) -> float:
    """The latest slot at or before ``now``, given ``due``, a slot at or before ``now``.

    This is the downtime policy: after an outage only the most recent missed slot fires."""
    following = next_slot(c, tz, due)
    if following is None or following > now:
        return due
    slot = following
    span = 600.0
    while True:
        # Look back from ``now`` in growing spans for a slot later than the one known.
        start = now - span
        if start > slot:
            found = next_slot(c, tz, start)
            if found is None or found > now:
                span *= 4
                continue
            slot = found
        while (after := next_slot(c, tz, slot)) is not None and after <= now:
            slot = after
        return slot


# -- words ------------------------------------------------------------------------------------


def describe(expression: str) -> str:
    """A short English description, e.g. 'At 09:00, on Monday'."""
    c = parse(expression)
    parts = c.expression.split(" ") if not c.expression.startswith("@") else (
        SHORTCUTS[c.expression].split(" ")
    )
    minute, hour, dom, month, dow = parts
    if minute == "*" and hour == "*":
        when = "Every minute"
    elif minute.startswith("*/") and hour == "*":
        when = f"Every {minute[2:]} minutes"
    elif len(c.minutes) == 1 and hour == "*":
        when = "Every hour" if c.minutes[0] == 0 else f"At minute {c.minutes[0]} past every hour"
    elif len(c.minutes) == 1 and hour.startswith("*/"):
        when = f"At minute {c.minutes[0]} past every {hour[2:]} hours"
    elif len(c.minutes) * len(c.hours) <= 4:
        when = "At " + ", ".join(f"{h:02d}:{m:02d}" for h in c.hours for m in c.minutes)
    else:
        when = f"At minute {minute} past hour {hour}"
    words = [when]
    if dom != "*" and dow != "*":
        words.append(f"on day-of-month {dom} or on {_days(c)}")
    elif dom != "*":
        days = sorted(c.days)
        words.append(f"on day {days[0]} of the month" if len(days) == 1 else f"on days {dom}")
    elif dow != "*":
        words.append(f"on {_days(c)}")
    if month != "*":
        words.append("in " + ", ".join(_dt.date(2000, m, 1).strftime("%B") for m in c.months))
    return ", ".join(words)


def _days(c: Cron) -> str:
    names = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
    if c.weekdays == {1, 2, 3, 4, 5}:
        return "Monday through Friday"
    return ", ".join(names[d] for d in sorted(c.weekdays))


__all__ = [
    "Cron",
    "CronError",
    "describe",
    "latest_slot",
    "next_slot",
    "parse",
    "timezones",
    "upcoming",
    "validate",
    "zone",
]
