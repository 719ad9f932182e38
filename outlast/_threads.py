"""Threads for a run's sync code (a sync task, a sync step body) that the worker can see,
count and try to stop.

``asyncio.to_thread`` gives no handle on its thread: once the attempt awaiting it is
unwound (its ``max_duration`` passed, it was cancelled) the thread runs on unseen, its
slot is promised to the next run while it still uses a core, and it holds one of the
default executor's few threads, which the store's calls need too. So each call of a
run's sync code gets a thread of its own, registered on the run, and when the attempt
ends while it still runs the worker

- keeps counting it busy until it returns: the next run does not start in its slot;
- raises ``Stopped`` in it (``PyThreadState_SetAsyncExc``). That stops pure-Python code
  at its next bytecode, unless the code catches ``BaseException`` and goes on. It does
  not reach code blocked in C or a system call (a lock wait, a socket read, ``time.sleep``,
  a long C-extension call): the exception is raised only when control returns to Python
  bytecode, and the thread keeps its slot until then.

A thread per call costs a thread start (tens of microseconds) against a pool's reuse;
sync code is the slow path already, and the handle is what makes it stoppable.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import threading
from collections.abc import Callable
from typing import Any

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc


class Stopped(BaseException):
    """Raised by the platform into a run's thread still running after its attempt ended.
    Not an Exception, so ``except Exception:`` in task code lets it through."""


class RunThread:
    """One call of sync code in a daemon thread of its own: a daemon, since a worker must
    be able to exit while code it could not stop still runs."""

    def __init__(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Any] = self.loop.create_future()
        self.returned = False  # read and written on the loop's thread only
        self._context = contextvars.copy_context()  # the run's context, as to_thread does
        self._call = (fn, args, kwargs)
        self._lock = threading.Lock()  # orders a stop against the thread's return
        self._finished = False
        self._stop_sent = False
        self._on_exit: list[Callable[[], None]] = []
        self.thread = threading.Thread(target=self._body, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def on_exit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the loop once the thread returned (now if it has)."""
        if self.returned:
            callback()
        else:
            self._on_exit.append(callback)

    def stop(self) -> bool:
        """Raise ``Stopped`` in the thread, once; False if it was over or already told.
        Sent under the lock the thread takes on its way out, so it never lands in a thread
        that has left the code (see ``_body``)."""
        with self._lock:
            ident = self.thread.ident
            if self._finished or self._stop_sent or ident is None:
                return False
            self._stop_sent = True
            return bool(_set_async_exc(ctypes.c_ulong(ident), ctypes.py_object(Stopped)))

    def _body(self) -> None:
        fn, args, kwargs = self._call
        outcome: tuple[bool, Any] = (False, Stopped())
        try:
            try:
                outcome = (True, self._context.run(fn, *args, **kwargs))
            except BaseException as exc:
                outcome = (False, exc)
            with self._lock:
                self._finished = True
            # A stop sent after the code returned, before the flag was set, is still
            # pending: clear it (a NULL exception clears) so it cannot fire below.
            _set_async_exc(ctypes.c_ulong(threading.get_ident()), None)
        except Stopped:
            pass  # it fired in the lines above, after the code was done: nothing to stop
        self._finished = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self.loop.call_soon_threadsafe(self._settle, outcome)

    def _settle(self, outcome: tuple[bool, Any]) -> None:
        self.returned = True
        ok, value = outcome
        if not self.future.done():  # done: cancelled, its attempt unwound meanwhile
            if ok:
                self.future.set_result(value)
            elif isinstance(value, StopIteration):  # a future refuses one, as a generator does
                err = RuntimeError("the code raised StopIteration")
                err.__cause__ = value
                self.future.set_exception(err)
            else:
                self.future.set_exception(value)
        callbacks, self._on_exit = self._on_exit, []
        for callback in callbacks:
            callback()


async def run_in_thread(
    threads: set[RunThread] | None, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """Call ``fn`` in a ``RunThread`` registered in ``threads`` while it runs; await its
    result. Cancelling the awaiting task leaves the thread running (and registered)."""
    rt = RunThread(name, fn, *args, **kwargs)
    if threads is not None:
        threads.add(rt)
        rt.on_exit(lambda: threads.discard(rt))
    rt.start()
    return await rt.future
