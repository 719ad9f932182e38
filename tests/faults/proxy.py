"""A TCP proxy between a worker and PostgreSQL that a test can cut and restore.

Plain sockets and threads: an accept thread, and two pump threads per connection.
``cut()`` closes every connection through it and refuses new ones (a network partition,
as the worker sees it: connections reset, connects fail); ``restore()`` accepts again.
Every socket it ever opened is in one set and closed by ``close()``, so none is left to
the garbage collector (which would warn in whichever test runs next).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._mu = threading.Lock()
        self._open = True
        self._closed = False
        self._live: set[socket.socket] = set()  # every socket not yet closed
        self.connections = 0
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Proxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def cut(self) -> None:
        """Reset every connection and refuse new ones."""
        with self._mu:
            self._open = False
            doomed = list(self._live)
            self._live.clear()
        for s in doomed:
            _reset(s)

    def restore(self) -> None:
        with self._mu:
            self._open = True

    def close(self) -> None:
        with self._mu:
            self._closed = True
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept thread
        self._listener.close()
        for t in self._threads:
            t.join(10)

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._listener.accept()
            except OSError:  # the listener was closed
                return
            with self._mu:
                refuse = not self._open or self._closed
                if not refuse:
                    self._live.add(down)
            if refuse:
                _reset(down)
                continue
            try:
                up = socket.create_connection(self.target, timeout=5)
            except OSError:
                self._drop(down)
                continue
            with self._mu:
                if down not in self._live:  # cut while connecting upstream
                    up.close()
                    continue
                self._live.add(up)
                self.connections += 1
            self._spawn(self._pump, down, up)
            self._spawn(self._pump, up, down)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        self._drop(src)
        self._drop(dst)

    def _drop(self, s: socket.socket) -> None:
        with self._mu:
            mine = s in self._live
            self._live.discard(s)
        if mine:
            _reset(s)


def _reset(s: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0): a cut, not a hang-up. The shutdown first wakes a
    pump thread blocked reading it, which a close from another thread does not."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()
