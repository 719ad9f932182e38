"""Which event loop the worker and server processes run on.

uvloop by default where it is installed (a dependency of outlast on Linux and macOS): the
standard loop polls with millisecond timeouts rounded up, and every wake-up from another
thread (each commit returns from one) lands a timer that falls due in between a poll
later, up to a millisecond late. At a few hundred short runs a second that lateness is
what a worker loses; bench/README.md#limits has the figures. ``--loop asyncio`` (or
``OUTLAST_LOOP=asyncio``) keeps the standard loop, for code that depends on it."""

from __future__ import annotations

import asyncio
import importlib.util

from ._errors import ConfigurationError

CHOICES = ("auto", "uvloop", "asyncio")


def loop_name(choice: str) -> str:
    """The loop ``choice`` stands for: auto is uvloop when it can be imported."""
    if choice not in CHOICES:
        raise ConfigurationError(
            f"loop must be one of {', '.join(CHOICES)}, not {choice!r}", field="loop"
        )
    if choice == "auto":
        return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    if choice == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ConfigurationError(
            "loop 'uvloop' was asked for but uvloop is not installed "
            "(pip install uvloop, or --loop asyncio)",
            field="loop",
        )
    return choice


def new_event_loop(choice: str = "auto") -> asyncio.AbstractEventLoop:
    """A new event loop of the kind ``choice`` names (see :func:`loop_name`)."""
    if loop_name(choice) == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()
