"""SQLite cross-process wake-ups: a worker waiting in ``wait_for_work`` returns as soon as
another connection or process commits ready work, not at its next poll; with nothing
committed it waits the timeout out. Timings are loose bounds: the machine is shared."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from outlast import task
from outlast.client import Client
from outlast.store import open_store
from outlast.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent


@task(id="wake-me")
async def wake_me(payload: dict[str, int]) -> None:
    pass


def migrated(url: str) -> str:
    s = open_store(url)
    s.migrate()
    s.close()
    return url


@pytest.fixture
def url() -> Iterator[str]:
    # A short directory, not tmp_path: a socket's path is limited to about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="outlast-") as tmp:
        yield migrated(f"sqlite:///{tmp}/outlast.db")


@pytest.fixture
def waiting(url: str) -> Iterator[SQLiteStore]:
    """The worker's side: a store that has waited once, so its wake-up socket exists."""
    s = open_store(url)
    assert isinstance(s, SQLiteStore)
    s.wait_for_work(0)
    assert len(list(s.lock_dir.glob("*.wake"))) == 1
    yield s
    s.close()


def wait_in_thread(store: SQLiteStore, timeout: float) -> tuple[threading.Thread, list[float]]:
    returned: list[float] = []

    def wait() -> None:
        store.wait_for_work(timeout)
        returned.append(time.time())

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    return t, returned


def test_a_trigger_through_another_connection_wakes_the_waiter(
    url: str, waiting: SQLiteStore
) -> None:
    t, returned = wait_in_thread(waiting, 5.0)
    time.sleep(0.2)
    assert not returned, "woke with nothing committed"
    client = Client(url, env="dev")
    try:
        client.trigger(wake_me, {"n": 1})
        committed = time.time()
    finally:
        client.close()
    t.join(5.0)
    assert returned, "wait_for_work(5) did not return"
    assert returned[0] - committed < 1.0


def trigger_from_another_process(url: str) -> float:
    """Trigger a run in a new process; when its commit returned (time.time())."""
    script = (
        "import sys, time\n"
        "from outlast import task\n"
        "from outlast.client import Client\n"
        "@task(id='wake-me')\n"
        "async def wake_me(payload: dict[str, int]) -> None: ...\n"
        "c = Client(sys.argv[1], env='dev')\n"
        "c.trigger(wake_me, {'n': 2})\n"
        "print(time.time(), flush=True)\n"
        "c.close()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return float(proc.stdout.split()[-1])


def test_a_trigger_from_another_process_wakes_the_waiter(url: str, waiting: SQLiteStore) -> None:
    t, returned = wait_in_thread(waiting, 5.0)
    committed = trigger_from_another_process(url)
    t.join(5.0)
    assert returned, "wait_for_work(5) did not return"
    assert returned[0] - committed < 1.0


def test_with_nothing_committed_it_waits_the_timeout_out(waiting: SQLiteStore) -> None:
    start = time.monotonic()
    waiting.wait_for_work(0.2)
    took = time.monotonic() - start
    assert 0.15 <= took < 2.0


def test_many_wake_ups_while_busy_count_as_one(url: str, waiting: SQLiteStore) -> None:
    client = Client(url, env="dev")
    try:
        for n in range(5):
            client.trigger(wake_me, {"n": n})
    finally:
        client.close()
    waiting.wait_for_work(5.0)  # pending: returns at once
    start = time.monotonic()
    waiting.wait_for_work(0.2)  # drained by the first: waits again
    assert time.monotonic() - start >= 0.15


def test_wake_local_wakes_the_waiter(waiting: SQLiteStore) -> None:
    t, returned = wait_in_thread(waiting, 5.0)
    time.sleep(0.1)
    woke = time.time()
    waiting.wake_local()
    t.join(5.0)
    assert returned and returned[0] - woke < 1.0


def test_a_dead_waiters_socket_is_removed_and_close_removes_its_own(
    url: str, waiting: SQLiteStore
) -> None:
    lock_dir = waiting.lock_dir
    ours = sorted(lock_dir.glob("*.wake"))
    # a worker killed with SIGKILL leaves its socket file behind, bound to nobody
    dead = lock_dir / f"{ours[0].name.split('-')[0]}-deadbeef.wake"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(dead))
    client = Client(url, env="dev")
    try:
        client.trigger(wake_me, {"n": 3})
    finally:
        client.close()
    assert not dead.exists()
    assert ours[0].exists()
    waiting.close()
    assert not ours[0].exists()


def test_without_a_socket_it_falls_back_to_polling(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    s = open_store(migrated(f"sqlite:///{deep}/outlast.db"))
    assert isinstance(s, SQLiteStore)
    try:
        start = time.monotonic()
        s.wait_for_work(0.2)  # the socket's path is too long: waits the timeout out
        assert 0.15 <= time.monotonic() - start < 2.0
        assert not list(s.lock_dir.glob("*.wake"))
        t, returned = wait_in_thread(s, 5.0)
        woke = time.time()
        s.wake_local()  # in-process wake-ups still work
        t.join(5.0)
        assert returned and returned[0] - woke < 1.0
    finally:
        s.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux's")
def test_a_database_too_deep_for_a_socket_path_still_wakes_its_waiters(
    tmp_path: Path,
) -> None:
    """Its waiter binds an abstract socket named after a marker file in the lock
    directory; a trigger from another process, which opened the database by another path
    (a symlink), finds it there and wakes it."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    url = migrated(f"sqlite:///{deep}/outlast.db")
    store = open_store(url)
    assert isinstance(store, SQLiteStore)
    try:
        store.wait_for_work(0)
        [marker] = store.lock_dir.glob("*.wakea")  # no socket file: its path is too long
        assert len(os.fsencode(str(marker))) > 100 and marker.is_file()
        t, returned = wait_in_thread(store, 10.0)
        link = tmp_path / "link"
        link.symlink_to(deep)
        committed = trigger_from_another_process(f"sqlite:///{link}/outlast.db")
        t.join(10.0)
        assert returned, "wait_for_work(10) did not return"
        assert returned[0] - committed < 5.0
    finally:
        store.close()
    assert not list(deep.glob("outlast.db.workers/*.wakea")), "the marker outlives the store"
