"""The cron parser and the slot arithmetic, DST policy included (no database here).

T21: ``30 2 * * *`` in Europe/Berlin and ``30 1 * * *`` in America/New_York across the
2026 transitions fire once per day: a skipped local time at the first instant after the
gap, a repeated one at its first occurrence. Expressions with ``*`` in the hour field
follow the wall clock instead (checked minute by minute against a brute-force oracle).
"""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys

import pytest

from outlast import cron
from outlast.cron import CronError

from .conftest import ROOT

UTC = dt.UTC


def at(text: str) -> float:
    """An instant from an ISO string with an offset."""
    return dt.datetime.fromisoformat(text).timestamp()


def local(ts: float, zone: str) -> str:
    return dt.datetime.fromtimestamp(ts, cron.zone(zone)).isoformat()


def slots(expression: str, zone: str, start: str, end: str) -> list[str]:
    """Every slot in [start, end), as local ISO times."""
    c, tz = cron.parse(expression), cron.zone(zone)
    out, t, stop = [], at(start) - 0.001, at(end)
    while (t := cron.next_slot(c, tz, t)) is not None and t < stop:
        out.append(local(t, zone))
    return out


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "field"),
    [
        ("61 * * * *", "minute"),
        ("-1 * * * *", "minute"),
        ("*/0 * * * *", "minute"),
        ("1,,2 * * * *", "minute"),
        ("5-1 * * * *", "minute"),
        ("* 24 * * *", "hour"),
        ("* x * * *", "hour"),
        ("* * 0 * *", "day-of-month"),
        ("* * 32 * *", "day-of-month"),
        ("0 0 30 2 *", "day-of-month"),
        ("0 0 31 APR,JUN *", "day-of-month"),
        ("* * * 13 *", "month"),
        ("* * * JANUARY *", "month"),
        ("* * * * 8", "day-of-week"),
        ("* * * * FUNDAY", "day-of-week"),
        ("* * * * MON-", "day-of-week"),
    ],
)
def test_a_bad_field_is_named(expression: str, field: str) -> None:
    with pytest.raises(CronError) as info:
        cron.parse(expression)
    assert info.value.cron_field == field
    assert f"{field} field" in info.value.message
    assert info.value.field == "cron" and info.value.code == "validation_error"


@pytest.mark.parametrize("expression", ["", "* * * *", "* * * * * *", "@sometimes", "@"])
def test_a_bad_shape_is_explained(expression: str) -> None:
    with pytest.raises(CronError) as info:
        cron.parse(expression)
    assert "5" in info.value.message or "shortcut" in info.value.message


def test_fields_ranges_lists_steps_and_names() -> None:
    c = cron.parse("0,30 9-17/4 1,15 JAN-MAR,dec mon-fri")
    assert c.minutes == (0, 30)
    assert c.hours == (9, 13, 17)
    assert c.days == {1, 15}
    assert c.months == (1, 2, 3, 12)
    assert c.weekdays == {1, 2, 3, 4, 5}
    assert cron.parse("5/20 * * * *").minutes == (5, 25, 45)
    assert cron.parse("* * * * 7").weekdays == {0}
    assert cron.parse("* * * * FRI-SUN").weekdays == {5, 6, 0}
    assert cron.parse("  0   9 * *   MON ").expression == "0 9 * * MON"


@pytest.mark.parametrize(
    ("shortcut", "same_as"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@HOURLY", "0 * * * *"),
    ],
)
def test_shortcuts(shortcut: str, same_as: str) -> None:
    a, b = cron.parse(shortcut), cron.parse(same_as)
    assert (a.minutes, a.hours, a.days, a.months, a.weekdays, a.hour_star) == (
        b.minutes, b.hours, b.days, b.months, b.weekdays, b.hour_star
    )
    start = at("2026-05-05T10:07:00+00:00")
    assert cron.upcoming(a, cron.zone("UTC"), start, 3) == cron.upcoming(
        b, cron.zone("UTC"), start, 3
    )


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # Vixie cron: the 13th, or any Friday.
    got = slots("0 0 13 * FRI", "UTC", "2026-02-01T00:00:00+00:00", "2026-03-01T00:00:00+00:00")
    assert [s[:10] for s in got] == ["2026-02-06", "2026-02-13", "2026-02-20", "2026-02-27"]
    # With one day field '*', both must match: Fridays the 13th only.
    got = slots("0 0 13 * *", "UTC", "2026-01-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00")
    assert len(got) == 12


def test_february_29_and_far_slots() -> None:
    got = slots("0 12 29 2 *", "UTC", "2026-01-01T00:00:00+00:00", "2033-01-01T00:00:00+00:00")
    assert got == ["2028-02-29T12:00:00+00:00", "2032-02-29T12:00:00+00:00"]
    got = slots("0 */12 29 2 *", "Europe/Berlin", "2026-01-01T00:00:00+00:00",
                "2033-01-01T00:00:00+00:00")
    assert got == ["2028-02-29T00:00:00+01:00", "2028-02-29T12:00:00+01:00",
                   "2032-02-29T00:00:00+01:00", "2032-02-29T12:00:00+01:00"]


def test_unknown_time_zone_names_the_field() -> None:
    with pytest.raises(cron.ValidationError) as info:
        cron.zone("Europe/Pariss")
    assert info.value.field == "timezone"
    assert "Europe/Paris" in cron.timezones()


def test_describe() -> None:
    assert cron.describe("0 9 * * MON") == "At 09:00, on Monday"
    assert cron.describe("*/5 * * * *") == "Every 5 minutes"
    assert cron.describe("* * * * *") == "Every minute"
    assert cron.describe("@hourly") == "Every hour"
    assert cron.describe("0 9 * * 1-5") == "At 09:00, on Monday through Friday"
    assert cron.describe("0 0 1 JAN *") == "At 00:00, on day 1 of the month, in January"


# -- DST (T21) --------------------------------------------------------------------------------


def test_berlin_spring_forward_fires_the_skipped_0230_once_at_0300() -> None:
    got = slots("30 2 * * *", "Europe/Berlin",
                "2026-03-27T00:00:00+01:00", "2026-03-31T00:00:00+02:00")
    assert got == [
        "2026-03-27T02:30:00+01:00",
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:30 does not exist: the first valid instant
        "2026-03-30T02:30:00+02:00",
    ]


def test_berlin_fall_back_fires_the_repeated_0230_once() -> None:
    got = slots("30 2 * * *", "Europe/Berlin",
                "2026-10-24T00:00:00+02:00", "2026-10-27T00:00:00+01:00")
    assert got == [
        "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",  # the first of two 02:30s
        "2026-10-26T02:30:00+01:00",
    ]


def test_new_york_0130_across_both_transitions() -> None:
    spring = slots("30 1 * * *", "America/New_York",
                   "2026-03-07T00:00:00-05:00", "2026-03-10T00:00:00-04:00")
    assert spring == [  # 02:00 -> 03:00; 01:30 is untouched
        "2026-03-07T01:30:00-05:00",
        "2026-03-08T01:30:00-05:00",
        "2026-03-09T01:30:00-04:00",
    ]
    fall = slots("30 1 * * *", "America/New_York",
                 "2026-10-31T00:00:00-04:00", "2026-11-03T00:00:00-05:00")
    assert fall == [
        "2026-10-31T01:30:00-04:00",
        "2026-11-01T01:30:00-04:00",  # 01:00-02:00 happens twice: fires on the first
        "2026-11-02T01:30:00-05:00",
    ]
    skipped = slots("30 2 * * *", "America/New_York",
                    "2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00")
    assert skipped == ["2026-03-08T03:00:00-04:00"]


def test_a_skipped_hour_of_fixed_times_collapses_into_one_slot() -> None:
    got = slots("*/15 2 * * *", "Europe/Berlin",
                "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00")
    assert got == ["2026-03-29T03:00:00+02:00"]
    got = slots("*/15 2 * * *", "Europe/Berlin",
                "2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00")
    assert got == [f"2026-10-25T02:{m:02d}:00+02:00" for m in (0, 15, 30, 45)]


def test_hourly_expressions_follow_the_wall_clock() -> None:
    spring = slots("30 * * * *", "Europe/Berlin",
                   "2026-03-29T00:00:00+01:00", "2026-03-29T05:00:00+02:00")
    assert spring == ["2026-03-29T00:30:00+01:00", "2026-03-29T01:30:00+01:00",
                      "2026-03-29T03:30:00+02:00", "2026-03-29T04:30:00+02:00"]
    fall = slots("30 * * * *", "Europe/Berlin",
                 "2026-10-25T01:00:00+02:00", "2026-10-25T04:00:00+01:00")
    assert fall == ["2026-10-25T01:30:00+02:00", "2026-10-25T02:30:00+02:00",
                    "2026-10-25T02:30:00+01:00", "2026-10-25T03:30:00+01:00"]


def _oracle(expression: str, zone: str, start: float, end: float) -> list[float]:
    """Slots by brute force: every UTC minute, judged by the written policy."""
    c, tz = cron.parse(expression), cron.zone(zone)
    out: list[float] = []
    seen_walls: set[dt.datetime] = set()
    t = start - start % 60
    pending_gap = False
    while t < end:
        w = dt.datetime.fromtimestamp(t, tz)
        naive = w.replace(tzinfo=None)
        prev = dt.datetime.fromtimestamp(t - 60, tz).replace(tzinfo=None)
        jumped = naive - prev > dt.timedelta(minutes=1)
        if jumped and not c.hour_star:
            # The skipped wall minutes (prev, naive): any match fires now, once.
            m = prev + dt.timedelta(minutes=1)
            while m < naive:
                if c.day_matches(m.date()) and m.hour in c.hours and m.minute in c.minutes:
                    pending_gap = True
                m += dt.timedelta(minutes=1)
        matches = (c.day_matches(naive.date()) and naive.hour in c.hours
                   and naive.minute in c.minutes)
        repeat = naive in seen_walls
        if (matches and (c.hour_star or not repeat)) or pending_gap:
            if t >= start:
                out.append(t)
            pending_gap = False
        seen_walls.add(naive)
        t += 60
    return out


# Three days around each 2026 transition (Lord Howe moves its clocks by 30 minutes).
TRANSITIONS = {
    "Europe/Berlin": ["2026-03-28", "2026-10-24"],
    "America/New_York": ["2026-03-07", "2026-10-31"],
    "Australia/Lord_Howe": ["2026-04-04", "2026-10-03"],
}


@pytest.mark.parametrize("zone", sorted(TRANSITIONS))
@pytest.mark.parametrize("expression", ["* * * * *", "*/7 * * * *", "30 2 * * *",
                                        "0,45 1-3 * * *", "15 */2 * * *", "* 2 * * *",
                                        "15 */3 * * TUE,SUN"])
def test_slots_match_a_brute_force_oracle_across_transitions(expression: str, zone: str) -> None:
    c, tz = cron.parse(expression), cron.zone(zone)
    for day in TRANSITIONS[zone]:
        start = dt.datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()
        end = start + 3 * 86400
        expected = _oracle(expression, zone, start, end)
        got, t = [], start - 0.001
        while (t := cron.next_slot(c, tz, t)) is not None and t < end:
            got.append(t)
        assert got == expected, (expression, zone, day)


def test_latest_slot_is_the_downtime_policy() -> None:
    c, tz = cron.parse("0 * * * *"), cron.zone("Europe/Paris")
    due = at("2026-06-01T10:00:00+02:00")
    now = at("2026-06-04T07:59:59+02:00")
    assert local(cron.latest_slot(c, tz, now, due), "Europe/Paris") == "2026-06-04T07:00:00+02:00"
    assert cron.latest_slot(c, tz, due + 5, due) == due
    rng = random.Random(7)
    for _ in range(50):
        start = at("2026-01-01T00:00:00+00:00") + rng.uniform(0, 3e7)
        e = rng.choice(["*/5 * * * *", "30 2 * * *", "0 9 * * MON", "0 0 1 * *"])
        c, tz = cron.parse(e), cron.zone(rng.choice(["Europe/Berlin", "America/New_York"]))
        due = cron.next_slot(c, tz, start)
        assert due is not None
        now = due + rng.uniform(0, 9e6)
        latest = cron.latest_slot(c, tz, now, due)
        following = cron.next_slot(c, tz, latest)
        assert due <= latest <= now and following is not None and following > now


def test_cli_next_prints_upcoming_times() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "outlast", "schedules", "next", "*/5 * * * *",
         "--tz", "Europe/Paris", "-n", "5", "--after", "2026-03-29T00:58:00Z"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    lines = out.splitlines()
    assert lines[0] == "*/5 * * * * in Europe/Paris: Every 5 minutes"
    assert len(lines) == 6
    assert "2026-03-29 03:00 Sun CEST" in lines[1]  # 01:00 UTC: 02:00 was skipped
    assert "2026-03-29 01:05:00 UTC" in lines[2]
    bad = subprocess.run(
        [sys.executable, "-m", "outlast", "schedules", "next", "* * * * * *"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert bad.returncode == 2 and "5" in bad.stderr
