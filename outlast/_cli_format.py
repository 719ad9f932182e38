"""How the CLI prints runs: errors as tracebacks (not one escaped JSON line), a run's
attempts with each failed attempt's error under it, columns that long keys cannot push
out of line, and output into a closed pipe (``| head``) ending quietly."""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from typing import Any

from .runs import JournalEntry, Run, RunEvent, RunStatus


def fit(text: str, width: int) -> str:
    """``text`` padded to ``width``, or cut in the middle with an ellipsis: the end of a
    journal key (its count, ``#3``) tells entries apart as much as its start."""
    if len(text) <= width:
        return text.ljust(width)
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def error_text(error: dict[str, Any] | None, indent: str = "") -> str:
    """``code: message``, then the traceback as the lines it was, indented."""
    if not error:
        return ""
    head = f"{error.get('code')}: {error.get('message')}"
    trace = str(error.get("traceback") or "").rstrip()
    if not trace or trace == "…":
        return head
    return head + "\n" + "\n".join(indent + line for line in trace.splitlines())


def result_text(run: Run) -> str:
    """What ``trigger --wait`` prints under ``<id> <status>``: the output as JSON, or
    the error with its traceback."""
    if run.status == RunStatus.COMPLETED or not run.error:
        return json.dumps(run.output)
    return error_text(run.error)


def attempt_lines(run: Run, journal: list[JournalEntry], events: list[RunEvent]) -> list[str]:
    """One line per attempt, a failed one with its error's first line (collapsed: the
    traceback is in ``--json`` and the dashboard)."""
    from .server.dashboard._timeline import attempts

    out = []
    for a in attempts(run, journal, events):
        if a["outcome"] == "scheduled":
            out.append(f"  {a['n']:<3}{'scheduled':12}due {_when(a['end'])}")
            continue
        took = f"{a['end'] - a['start']:.3f}s" if a["end"] is not None else "…"
        line = f"  {a['n']:<3}{a['outcome']:12}{_when(a['start'])} {took:>9}"
        if a["active_seconds"] is not None:  # the time it executed, without parked waits
            line += f"  active {a['active_seconds']:.3f}s"
        err = a["error"]
        if err and a["outcome"] == "failed":
            line += f"  {err.get('code') or 'error'}: {err.get('message')}"
        out.append(line)
    return out


def run_error_lines(run: Run) -> list[str]:
    """The run's own error, for a run that ended without completing; a completed or
    live run's error is an earlier attempt's, shown under its attempt."""
    if not run.error or not run.is_final or run.status == RunStatus.COMPLETED:
        return []
    return ("error     " + error_text(run.error, indent="  ")).splitlines()


def quiet_broken_pipe() -> int:
    """The reader went away (``outlast runs list | head``): stop writing, no traceback,
    and exit as a process killed by SIGPIPE does (128 + 13), like coreutils."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the flush at exit must not fail again
    return 141
