"""Threads for a run's sync code (a sync task, a sync step body) that the worker can see,
count and try to stop.

``asyncio.to_thread`` gives no handle on its thread: once the attempt awaiting it is
unwound (its ``max_duration`` passed, it was cancelled) the thread runs on unseen, its
slot is promised to the next run while it still uses a core, and it holds one of the
default executor's few threads, which the store's calls need too. So each call of a
run's sync code is a ``RunThread``, registered on the run with the thread it runs in,
and when the attempt ends while it still runs the worker

- keeps counting it busy until it returns: the next run does not start in its slot;
- raises ``Stopped`` in it (``PyThreadState_SetAsyncExc``). That stops pure-Python code
  at its next bytecode, unless the code catches ``BaseException`` and goes on. It does
  not reach code blocked in C or a system call (a lock wait, a socket read, ``time.sleep``,
  a long C-extension call): the exception is raised only when control returns to Python
  bytecode, and the thread keeps its slot until then.

The threads are pooled, as an executor's are, but a thread whose call outlived its
attempt goes back to the pool only when the call returns; the pool starts another
meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import queue
import threading
from collections.abc import Callable
from typing import Any

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc


class Stopped(BaseException):
    """Raised by the platform into a run's thread still running after its attempt ended.
    Not an Exception, so ``except Exception:`` in task code lets it through."""


class RunThread:
    """One call of sync code, in a thread of the pool, that the loop can await, count and
    try to stop."""

    def __init__(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Any] = self.loop.create_future()
        self.returned = False  # read and written on the loop's thread only
        self._context = contextvars.copy_context()  # the run's context, as to_thread does
        self._call = (fn, args, kwargs)
        self._lock = threading.Lock()  # orders a stop against the call's start and return
        self._ident: int | None = None  # the thread running the call, once it started
        self._finished = False
        self._stop_sent = False
        self._on_exit: list[Callable[[], None]] = []

    def start(self) -> None:
        _POOL.submit(self)

    def on_exit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the loop once the call returned (now if it has)."""
        if self.returned:
            callback()
        else:
            self._on_exit.append(callback)

    def stop(self) -> bool:
        """Raise ``Stopped`` in the call's thread, once; a call not started yet never runs.
        False if it was over or already told. Sent under the lock the thread takes on its
        way out, so it never lands in a thread that left the call (see ``execute``)."""
        with self._lock:
            if self._finished or self._stop_sent:
                return False
            self._stop_sent = True
            if self._ident is None:
                return True
            return bool(_set_async_exc(ctypes.c_ulong(self._ident), ctypes.py_object(Stopped)))

    def execute(self) -> None:
        """Run the call, in a pool thread, and hand its outcome to the loop."""
        fn, args, kwargs = self._call
        thread = threading.current_thread()
        pool_name = thread.name
        outcome: tuple[bool, Any] = (False, Stopped())
        try:
            try:
                with self._lock:
                    if self._stop_sent:
                        raise Stopped  # its attempt ended before it started
                    self._ident = threading.get_ident()
                thread.name = self.name
                outcome = (True, self._context.run(fn, *args, **kwargs))
            except BaseException as exc:
                outcome = (False, exc)
            with self._lock:
                self._finished = True
            # A stop sent after the call returned, before the flag was set, is still
            # pending: clear it (a NULL exception clears) so it cannot fire in the pool.
            _set_async_exc(ctypes.c_ulong(threading.get_ident()), None)
        except Stopped:
            pass  # it fired in the lines above, after the call was done: nothing to stop
        self._finished = True
        thread.name = pool_name
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


class _Pool:
    """Daemon threads, reused: a worker must be able to exit while code it could not stop
    still runs, and a thread started per call costs more than the call's hand-off to a
    waiting one. A thread is taken per call and given back when the call returns; no
    call waits for a busy thread."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep  # idle threads kept; more exit when their call returns
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[RunThread]] = []

    def submit(self, call: RunThread) -> None:
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(
                target=self._serve, args=(inbox,), name="outlast-sync", daemon=True
            ).start()
        inbox.put(call)

    def _serve(self, inbox: queue.SimpleQueue[RunThread]) -> None:
        while True:
            inbox.get().execute()
            with self._lock:
                if len(self._idle) >= self.keep:
                    return
                self._idle.append(inbox)


_POOL = _Pool()


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
