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
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from ._errors import ConfigurationError

log = logging.getLogger("outlast.worker")

CHOICES = ("auto", "uvloop", "asyncio")


def loop_name(choice: str) -> str:
    """The loop ``choice`` stands for: auto is uvloop when it can be imported."""
    if choice not in CHOICES:
        raise ConfigurationError(
            f"loop must be one of {', '.join(CHOICES)}, not {choice!r}", field="loop"
        )
    installed = importlib.util.find_spec("uvloop") is not None
    if choice == "auto":
        return "uvloop" if installed else "asyncio"
    if choice == "uvloop" and not installed:
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


def run(
    main: Coroutine[Any, Any, None],
    choice: str,
    *,
    join_threads: bool,
    contain: Callable[[], bool] | None = None,
) -> None:
    """Run ``main`` to the end on a new loop of kind ``choice``, then close the loop.

    Not asyncio.run(), which always joins the default executor's threads: a worker must
    not (``join_threads=False``), since a sync step still running past the shutdown grace
    would keep the process alive as long as it runs.

    asyncio lets a KeyboardInterrupt or SystemExit that ends any task out of the loop, to
    stop the program. When one comes out while ``contain()`` says it was task code's (a
    worker whose SIGINT and SIGTERM are the loop's handlers, running runs: only code can
    have raised it, in a task it spawned), the loop goes on; whoever awaited that task got
    the exception, and the run fails with it."""
    loop = new_event_loop(choice)
    try:
        done = loop.create_task(main)
        done.add_done_callback(lambda _: loop.stop())
        while not done.done():
            try:
                loop.run_forever()
            except (KeyboardInterrupt, SystemExit) as exc:
                if done.done() or contain is None or not contain():
                    raise
                log.error(
                    "task code raised %s in an asyncio task of its own; the worker goes on",
                    type(exc).__name__,
                )
        done.result()
        loop.run_until_complete(loop.shutdown_asyncgens())
        if join_threads:
            loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()  # without join_threads, shuts the executor down without waiting
