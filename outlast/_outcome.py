"""How an exception from task code is told in a run's error, whatever the exception.

A run's error is written from ``str()`` and a formatted traceback of what the task's code
raised, and task code may raise anything: an exception whose ``__str__`` or ``__repr__``
raises, one whose ``__str__`` returns something that is not text, a ``BaseException`` that
is not an ``Exception``. Telling it must never raise: an error that cannot be written
leaves the run EXECUTING with nothing committed, which is worse than any failure. Every
function here falls back to a sentence naming the exception's type.
"""

from __future__ import annotations

import asyncio
import traceback


def type_name(exc: BaseException) -> str:
    """The exception's class name (a class may lie about it; then a neutral word)."""
    try:
        name = type(exc).__name__
    except BaseException:
        return "exception"
    return name if isinstance(name, str) else "exception"


def message(exc: BaseException) -> str:
    """``str(exc)``, or the type's name when it is empty or cannot be read."""
    name = type_name(exc)
    try:
        text = str(exc)
    except BaseException:
        return f"{name} (its message cannot be read: its __str__ raised)"
    if not isinstance(text, str):  # a C extension's __str__ can return anything
        return f"{name} (its message cannot be read)"
    return text or name


def task_message(exc: BaseException) -> str:
    """The message of a run's error when the task's code raised ``exc``. Exceptions keep
    their own message; a ``BaseException`` that is not an ``Exception`` is said to be the
    code's, since it looks like a signal of the platform or the interpreter."""
    text = message(exc)
    if isinstance(exc, Exception):
        return text
    name = type_name(exc)
    said = f"the task's code raised {name}" + ("" if text == name else f": {text}")
    if isinstance(exc, asyncio.CancelledError):
        return said + " (the platform did not cancel this run)"
    return said


def formatted_traceback(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(exc))
    except BaseException:
        return f"{type_name(exc)} (its traceback cannot be formatted)"
