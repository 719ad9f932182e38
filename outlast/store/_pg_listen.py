"""PostgreSQL wake-ups: LISTEN on a session connection of the store's own.

A trigger's commit sends a NOTIFY (the channel's payload is the environment) and every
listening worker wakes and claims; the claim, not the notification, decides what is
taken, so a lost or spurious wake-up costs a poll interval at worst. Two ways to wait:
``wait_for_work`` blocks a thread on the connection, and ``wakeup_fd`` hands its socket
to an event loop (``loop.add_reader``), which then reads what arrived with
``drain_wakeups``: a notification wakes the loop with no thread in between.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import psycopg

from .._errors import ConfigurationError
from ._pg_session import DIRECT_URL_SETTING, session_connection

log = logging.getLogger("outlast.store.postgres")

CHANNEL = "outlast_work"
_OK = psycopg.pq.ConnStatus.OK


class ListenMixin:
    """Mixed into PostgresStore, which sets ``url`` and ``direct_url``."""

    url: str
    direct_url: str | None
    _listener: psycopg.Connection[Any] | None = None
    _polling_warned = False

    def _init_listen(self) -> None:
        self._listener = None
        self._wake = threading.Event()

    def _listening(self) -> psycopg.Connection[Any]:
        """The LISTEN connection, (re)connected if it is missing or broken."""
        listener = self._listener
        if listener is None or listener.closed or listener.pgconn.status != _OK:
            self._close_listener()
            listener = session_connection(self.url, self.direct_url, "LISTEN/NOTIFY wake-ups")
            listener.execute(f"LISTEN {CHANNEL}")
            self._listener = listener
        return listener

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                listener.close()

    def _keep_payload(self, notify: psycopg.pq.misc.PGnotify) -> None:
        """Keep a notification's payload for ``take_handovers`` (``_pg_handover``)."""

    def _warn_polling(self) -> None:
        if not self._polling_warned:
            self._polling_warned = True
            log.warning("no LISTEN behind a connection pooler: set %s for prompt "
                        "wake-ups; polling meanwhile", DIRECT_URL_SETTING)

    def wake_local(self) -> None:
        self._wake.set()

    def wait_for_work(self, timeout: float) -> None:
        if self._wake.is_set():
            self._wake.clear()
            return
        try:
            for _ in self._listening().notifies(timeout=timeout, stop_after=1):
                break
        except ConfigurationError:
            # Behind a pooler with no direct URL: wake-ups come from polling alone (a
            # server; a worker refuses to start without its life lock).
            self._warn_polling()
            self._wake.wait(timeout)
        except psycopg.Error:
            # LISTEN lost (restart, PgBouncer in transaction mode): fall back to polling.
            self._close_listener()
            self._wake.wait(timeout)
        self._wake.clear()

    def wakeup_fd(self) -> int | None:
        """The LISTEN connection's socket, connecting it if need be (blocking: call it
        off the loop); None when there is none to be had (behind a pooler without a
        direct URL, the database away): the caller waits with ``wait_for_work``."""
        try:
            return self._listening().fileno()
        except ConfigurationError:
            self._warn_polling()
        except psycopg.Error as exc:
            log.debug("no LISTEN connection now: %s", exc)
            self._close_listener()
        return None

    def drain_wakeups(self) -> bool:
        """Read the notifications that arrived on ``wakeup_fd`` without blocking; False
        if the connection is lost. It is not closed here, since a loop may still watch its
        socket: the next ``wakeup_fd`` (once the loop let go) replaces it."""
        listener = self._listener
        if listener is None or listener.closed:
            return False
        pgconn = listener.pgconn
        try:
            pgconn.consume_input()
            while (n := pgconn.notifies()) is not None:
                self._keep_payload(n)
        except psycopg.Error:
            return False
        return pgconn.status == _OK
