"""The event-loop watchdog: async task code that holds the loop is named and timed out.

A run's ``max_duration`` is an asyncio timer, and a timer cannot fire while task code
keeps the loop on the CPU without awaiting: such a run used to end COMPLETED long past its
limit, and nothing else on the worker ran meanwhile. So while runs execute, a callback on
the loop stamps the time every ``period``, and a thread of the watchdog's own compares:

- the loop blocked for ``warn_after`` (1 s): a warning names what holds it, the run whose
  asyncio task is current on the loop (``asyncio.current_task(loop)``, read from here);
- that run past its ``max_duration`` deadline: it is marked timed out and ``LoopTimeout``
  is raised in the loop's thread (``PyThreadState_SetAsyncExc``), at the next bytecode the
  code runs; the exception unwinds the code to the worker, which ends the run TIMED_OUT.

What it cannot stop: code that catches ``BaseException`` and goes on, and code blocked in
C or a system call (the exception waits for the next Python bytecode; a C call holding
the GIL blocks this thread too). A task spawned by the run's code (``create_task``) is
named in the warning but not timed out: only the run's own task is. The exception is
sent only while the same task holds the loop in the same blocked stretch; should the loop
move on in the microseconds between that check and the send, it lands in whatever the
loop runs next: the worker hands back another run it lands in (attempt unspent), and
commits the timeout of the run it was meant for if it lands in the worker's code after
that run's code returned.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .durable import RunContext

log = logging.getLogger("outlast.worker")

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc


class LoopTimeout(BaseException):
    """Raised by the watchdog in the loop's thread: the run holding the loop is past its
    ``max_duration``. Not an Exception, so ``except Exception:`` lets it through."""


class Watchdog:
    def __init__(
        self,
        runs: Callable[[], Iterable[RunContext]],
        *,
        period: float = 0.1,
        warn_after: float = 1.0,
    ) -> None:
        self._runs = runs  # the runs executing; read from the watchdog's thread
        self.period = period
        self.warn_after = warn_after
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._beat = math.inf  # monotonic time of the loop's last stamp; inf: not watching
        self._handle: asyncio.TimerHandle | None = None
        self._armed = threading.Event()
        self._thread: threading.Thread | None = None

    def arm(self) -> None:
        """Watch the loop while runs execute; called on the loop at each run's start."""
        if self._handle is not None:
            return
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._handle = self.loop.call_later(self.period, self._stamp)
        self._armed.set()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._watch, name="outlast-watchdog", daemon=True
            )
            self._thread.start()

    def _stamp(self) -> None:
        assert self.loop is not None
        if any(True for _ in self._runs()):
            self._beat = time.monotonic()
            self._handle = self.loop.call_later(self.period, self._stamp)
            return
        # Nothing to watch: stop stamping (a worker idle for hours costs nothing).
        self._armed.clear()
        self._beat = math.inf
        self._handle = None

    def _watch(self) -> None:
        warned_at: float | None = None  # the stamp of the stretch already warned about
        while True:
            loop = self.loop
            if loop is None or loop.is_closed():
                return
            if not self._armed.wait(1.0):
                continue
            time.sleep(self.period)
            beat = self._beat
            lag = time.monotonic() - beat
            if lag < 2 * self.period:
                if warned_at is not None:
                    log.info("the event loop runs again")
                    warned_at = None
                continue
            try:
                if lag >= self.warn_after and warned_at != beat:
                    warned_at = beat
                    log.warning(
                        "the event loop has been blocked for %.1f s by %s: async task code "
                        "must await to let other runs, heartbeats and timers go on "
                        "(run blocking code in a sync task or a sync step)",
                        lag,
                        self._holder(loop),
                    )
                self._time_out_holder(loop, beat)
            except Exception:
                log.exception("the event-loop watchdog failed")

    def _held_by(
        self, loop: asyncio.AbstractEventLoop
    ) -> tuple[asyncio.Task[object] | None, RunContext | None]:
        task = asyncio.current_task(loop)
        if task is None:
            return None, None
        try:
            runs = list(self._runs())
        except RuntimeError:  # changed size while read: the loop is moving, not blocked
            return task, None
        return task, next((c for c in runs if c.main_task is task), None)

    def _holder(self, loop: asyncio.AbstractEventLoop) -> str:
        task, ctx = self._held_by(loop)
        if ctx is not None:
            return f"run {ctx.run.id} (task {ctx.run.task_id})"
        if task is not None:
            return f"asyncio task {task.get_name()!r}"
        return "a callback outside any asyncio task"

    def _time_out_holder(self, loop: asyncio.AbstractEventLoop, beat: float) -> None:
        task, ctx = self._held_by(loop)
        if ctx is None or ctx.deadline is None or ctx.end_reason is not None:
            return
        if time.monotonic() < ctx.deadline:
            return
        ctx.end_reason = "timeout"
        # Only while the same task still holds the loop in the same stretch: the
        # exception fires at whatever bytecode the loop's thread runs next.
        if asyncio.current_task(loop) is task and ctx.main_task is task and self._beat == beat:
            _set_async_exc(ctypes.c_ulong(self._loop_thread), ctypes.py_object(LoopTimeout))
            log.warning(
                "run %s held the event loop past its max_duration of %s s; interrupting it",
                ctx.run.id,
                ctx.run.max_duration,
                extra={"run_id": ctx.run.id},
            )
        else:  # it let go meanwhile: end it the ordinary way
            loop.call_soon_threadsafe(ctx.end, "timeout")
