"""Every example keeps its promise, end to end, on SQLite and PostgreSQL.

In-process tests drive a real Worker over a real store with a fake clock: retries,
timeouts and rate windows are crossed by advancing the clock, never by sleeping. Three
acceptance tests run ``outlast dev`` as a real process (SQLite): one triggers the signup
example from the CLI, one kills the dev process with SIGKILL in the middle of the invoice
export and checks that the restarted one resumes it, one completes the video render's
token by POSTing to its callback URL. The tutorial's code is run from docs/tutorial.md,
and the reference pages are checked against the public names and the CLI's flags.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples import fake_services
from examples.tasks import ALL
from outlast import FakeClock, TokenTimedOut, ValidationError, Worker
from outlast.client import Client
from outlast.runs import Run, RunStatus
from outlast.store import open_store
from outlast.store.base import Store
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake services' state and the exports go to a fresh directory per test."""
    path = tmp_path / "examples-data"
    monkeypatch.setenv("EXAMPLES_DATA_DIR", str(path))
    return path


# The examples of the five conditions; the scheduled ones are tested in test_schedules.py.
EXAMPLES = {task_id: t for task_id, t in ALL.items() if not task_id.startswith("cron-")}


@pytest.fixture
async def worker(store: Store) -> AsyncIterator[Worker]:
    w = Worker(store, tasks=EXAMPLES, concurrency=50)
    yield w
    await w.shutdown()


async def drive(
    worker: Worker,
    client: Client,
    clock: FakeClock,
    run_id: str,
    *,
    until: frozenset[RunStatus] | None = None,
    tick: float = 1.0,
    rounds: int = 400,
) -> Run:
    """Run the worker, advancing the fake clock by ``tick`` between idle rounds, until the
    run reaches one of ``until`` (a final status by default)."""
    for _ in range(rounds):
        await worker.run_until_idle()
        run = client.retrieve(run_id)
        if (run.status in until) if until is not None else run.is_final:
            return run
        clock.advance(tick)
    raise AssertionError(f"run {run_id} is still {client.retrieve(run_id).status}")


WAITING = frozenset({RunStatus.WAITING})


def attempts_by_key(client: Client, run_id: str) -> dict[str, int]:
    return {j.key: j.attempt for j in client.store.journal(run_id)}


# -- 1. invoices: past the time wall ----------------------------------------------------------


def read_invoice_ids(path: Path) -> list[str]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["invoice_id", "customer_id", "issued_on", "amount_cents", "currency",
                       "status"]
    return [r[0] for r in rows[1:]]


async def test_invoice_export_has_every_row_once_after_a_crash_mid_page(
    client: Client, worker: Worker, clock: FakeClock, data_dir: Path
) -> None:
    handle = client.trigger(
        "export-invoices", {"rows": 5_000, "page_size": 500, "page_delay": 0, "fail_on_page": 3}
    )
    run = await drive(worker, client, clock, handle.id)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.attempt == 2  # page 3 failed half-written on attempt 1
    assert run.output["rows"] == 5_000 and run.output["pages"] == 10
    assert run.metadata["progress"] == 1.0
    path = data_dir / "exports" / f"invoices-{handle.id}.csv"
    assert run.output["path"] == str(path)
    assert read_invoice_ids(path) == [f"INV-{n:06d}" for n in range(1, 5_001)]
    # Pages 0-2 were committed by attempt 1 and never exported again (C2); page 3 onwards
    # were written by attempt 2, which first cut off page 3's half-written rows.
    attempts = attempts_by_key(client, handle.id)
    assert [attempts[f"page-{p}"] for p in range(10)] == [1, 1, 1] + [2] * 7


async def test_invoice_export_logs_each_page_once(
    client: Client, worker: Worker, clock: FakeClock
) -> None:
    handle = client.trigger(
        "export-invoices", {"rows": 1_000, "page_size": 250, "page_delay": 0, "fail_on_page": 2}
    )
    await drive(worker, client, clock, handle.id)
    logged = [e.data["page"] for e in client.store.events(handle.id)
              if e.kind == "log" and e.message == "page exported"]
    assert logged == [1, 2, 3, 4]  # replayed pages are not logged again


# -- 2. signup: multi-step with intermediate state ----------------------------------------------


async def test_signup_charges_the_card_once_though_provisioning_fails(
    client: Client, worker: Worker, clock: FakeClock
) -> None:
    handle = client.trigger("signup", {"email": "ada@example.com", "plan": "pro"})
    run = await drive(worker, client, clock, handle.id)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.attempt == 2
    charges = fake_services.charges("ada@example.com")
    assert len(charges) == 1 and charges[0]["amount_cents"] == 2900
    assert run.output["charge_id"] == charges[0]["id"]
    assert fake_services.calls("provision:ada@example.com") == 2
    assert [e["recipient"] for e in fake_services.sent_emails("Welcome aboard")] == [
        "ada@example.com"
    ]
    assert attempts_by_key(client, handle.id) == {
        "charge-card": 1, "provision-account": 2, "send-welcome-email": 2,
    }


async def test_signup_charge_repeated_after_a_lost_response_charges_once(
    client: Client, worker: Worker, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The charge went through but its answer was lost: the step body runs again (C3),
    with the same idempotency key, and the payment API returns the first charge."""
    real_charge = fake_services.charge
    keys: list[str] = []

    def charge_then_lose_the_response(*args: Any, idempotency_key: str) -> dict[str, Any]:
        response = real_charge(*args, idempotency_key=idempotency_key)
        keys.append(idempotency_key)
        if len(keys) == 1:
            raise ConnectionResetError("connection reset by peer")
        return response

    monkeypatch.setattr(fake_services, "charge", charge_then_lose_the_response)
    handle = client.trigger("signup", {"email": "bob@example.com"})
    run = await drive(worker, client, clock, handle.id)

    assert run.status == RunStatus.COMPLETED, run.error
    assert keys == [f"{handle.id}:charge-card"] * 2
    assert len(fake_services.charges("bob@example.com")) == 1


async def test_signup_payload_is_validated_at_trigger_time(client: Client) -> None:
    with pytest.raises(ValidationError) as info:
        client.trigger("signup", {"email": "not an email"})
    assert info.value.field == "payload.email"
    assert client.list_runs() == []


# -- 3 and 4. digest: fan-out with concurrency control, retries with backoff --------------------


async def test_digest_sends_each_email_once_within_the_queue_limits(
    client: Client, worker: Worker, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_services, "EMAIL_LATENCY", 0.01)
    monkeypatch.setitem(fake_services.email_stats, "max_in_flight", 0)
    handle = client.trigger("send-digest", {"users": 300, "week": "2025-W01"})
    run = await drive(worker, client, clock, handle.id)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"week": "2025-W01", "sent": 300, "failed_user_ids": []}
    sent = fake_services.sent_emails("Your digest for 2025-W01")
    assert sorted(e["recipient"] for e in sent) == sorted(
        f"user{u}@example.com" for u in range(1, 301)
    )
    children = client.list_runs(task_id="send-digest-email", limit=1000)
    assert len(children) == 300
    assert all(c.parent_id == handle.id and c.queue == "emails" for c in children)
    retried = [c for c in children if c.attempt > 1]
    assert retried, "the fake provider answers 503 to about one request in ten"
    assert all(c.status == RunStatus.COMPLETED for c in children)
    assert fake_services.email_stats["max_in_flight"] <= 10  # the emails queue's limit


async def test_digest_retries_back_off_on_the_platform_clock(
    client: Client, worker: Worker, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Which sends meet a 503 depends on the random run ids; at one in ten, all 60 children
    # went through untouched about once in 550 runs (0.9 ** 60) and the test had no retry to
    # watch. At one in two that is 0.5 ** 60.
    monkeypatch.setattr(fake_services, "EMAIL_503_PERCENT", 50)
    handle = client.trigger("send-digest", {"users": 60})
    await drive(worker, client, clock, handle.id, until=WAITING)
    await worker.run_until_idle()
    # Without the clock moving, the children that met a 503 wait for their backoff (~2 s).
    waiting = client.list_runs(task_id="send-digest-email", status=["QUEUED"], limit=100)
    assert waiting and all(r.attempt == 2 for r in waiting)
    due = min(r.available_at for r in waiting) - client.store.now()
    assert 1.5 <= due <= 2.5  # min_delay 2 s, jitter ±20%
    clock.advance(2.5)
    await worker.run_until_idle()
    assert client.list_runs(task_id="send-digest-email", status=["QUEUED"]) == []
    run = await drive(worker, client, clock, handle.id)
    assert run.output["sent"] == 60


async def test_digest_rate_limit_spreads_starts_over_time(
    client: Client, worker: Worker, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_services, "EMAIL_503_PERCENT", 0)
    handle = client.trigger("send-digest", {"users": 250})
    await worker.run_until_idle()
    # The clock has not moved: one rate window, so at most 100 of the 250 have started.
    started = [r for r in client.list_runs(task_id="send-digest-email", limit=1000)
               if r.started_at is not None]
    assert len(started) == 100
    run = await drive(worker, client, clock, handle.id)
    assert run.output["sent"] == 250


# -- 5. video and refund: durable pauses --------------------------------------------------------


async def test_video_render_resumes_when_the_partner_calls_back(
    client: Client, worker: Worker, clock: FakeClock
) -> None:
    handle = client.trigger("render-video", {"video_id": "vid_42"})
    run = await drive(worker, client, clock, handle.id, until=WAITING)
    token_id = run.metadata["callback_token"]
    [job] = fake_services.render_jobs("vid_42")
    assert token_id in job["callback_url"]

    url = "https://cdn.example.com/vid_42.mp4"
    client.complete_token(token_id, {"status": "done", "url": url})
    # A second callback is answered but changes nothing: the first completion wins (C7).
    late = client.complete_token(token_id, {"status": "done", "url": "https://evil.example"})
    assert late.output == {"status": "done", "url": url}
    run = await drive(worker, client, clock, handle.id)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"video_id": "vid_42", "url": "https://videos.example.com/vid_42"}
    assert len(fake_services.render_jobs("vid_42")) == 1  # submitted once, despite the replay


async def test_video_render_gives_up_when_the_partner_never_calls_back(
    client: Client, worker: Worker, clock: FakeClock
) -> None:
    handle = client.trigger("render-video", {"video_id": "vid_7", "timeout_hours": 2})
    await drive(worker, client, clock, handle.id, until=WAITING)
    clock.advance(2 * 3600 - 60)
    await worker.run_until_idle()
    assert client.retrieve(handle.id).status == RunStatus.WAITING
    clock.advance(120)
    run = await drive(worker, client, clock, handle.id)
    assert run.status == RunStatus.FAILED
    assert run.error is not None and run.error["code"] == "aborted"
    assert run.attempt == 1  # AbortRun: no retry


async def test_refund_waits_for_approval_then_refunds_once(
    client: Client, worker: Worker, clock: FakeClock
) -> None:
    handle = client.trigger("refund", {"order_id": "ord_1", "amount_cents": 4200})
    run = await drive(worker, client, clock, handle.id, until=WAITING)
    token_id = run.metadata["approval_token"]
    assert [m["token_id"] for m in fake_services.admin_inbox()] == [token_id]
    clock.advance(24 * 3600)  # a day passes; still within the three-day deadline
    await worker.run_until_idle()
    assert client.retrieve(handle.id).status == RunStatus.WAITING

    client.complete_token(token_id, {"approved": True, "by": "ana"})
    run = await drive(worker, client, clock, handle.id)
    assert run.status == RunStatus.COMPLETED, run.error
    [issued] = fake_services.refunds("ord_1")
    assert run.output == {"order_id": "ord_1", "status": "refunded", "refund_id": issued["id"],
                          "decided_by": "ana"}


async def test_refund_rejected_refunds_nothing(
    client: Client, worker: Worker, clock: FakeClock
) -> None:
    handle = client.trigger("refund", {"order_id": "ord_2", "amount_cents": 100})
    run = await drive(worker, client, clock, handle.id, until=WAITING)
    client.complete_token(run.metadata["approval_token"], {"approved": False, "by": "ben"})
    run = await drive(worker, client, clock, handle.id)
    assert run.output["status"] == "rejected" and run.output["decided_by"] == "ben"
    assert fake_services.refunds("ord_2") == []


async def test_refund_expires_when_nobody_decides(
    client: Client, worker: Worker, clock: FakeClock
) -> None:
    handle = client.trigger("refund", {"order_id": "ord_3", "amount_cents": 100,
                                       "approval_timeout_seconds": 3600})
    await drive(worker, client, clock, handle.id, until=WAITING)
    clock.advance(3601)
    run = await drive(worker, client, clock, handle.id)
    assert run.status == RunStatus.COMPLETED
    assert run.output["status"] == "expired"
    assert fake_services.refunds("ord_3") == []
    # An approval that arrives after the deadline is refused: the token timed out.
    with pytest.raises(TokenTimedOut):
        client.complete_token(run.metadata["approval_token"], {"approved": True})
    assert fake_services.refunds("ord_3") == []


# -- acceptance: `outlast dev` as a real process ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OUTLAST_") and k != "EXAMPLES_DATA_DIR"}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outlast", *args],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def dev_dir(tmp_path: Path) -> Path:
    path = tmp_path / "dev"
    path.mkdir()
    return path


@pytest.fixture
def dev(dev_dir: Path) -> Iterator[Any]:
    """Start (and restart) `outlast dev --no-reload` in ``dev_dir`` on its default SQLite
    file, its API on a free port; every process started is stopped at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    port = _free_port()

    def start() -> tuple[subprocess.Popen[bytes], str]:
        log_path = dev_dir / f"dev-{len(procs)}.log"
        api = f"http://127.0.0.1:{port}"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "outlast", "dev", "--app", "examples.tasks",
                 "--no-reload", "--port", str(port)],
                cwd=dev_dir, env=_env(OUTLAST_PUBLIC_URL=api), stdout=log,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        deadline = time.monotonic() + 30
        while b"outlast dev:" not in log_path.read_bytes():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "outlast dev did not start"
            time.sleep(0.05)
        return proc, api

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_outlast_dev_runs_the_signup_example(dev: Any, dev_dir: Path) -> None:
    dev()
    result = _cli("trigger", "signup", "--payload", '{"email": "cli@example.com"}',
                  "--wait", "--timeout", "45", cwd=dev_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    first_line = result.stdout.splitlines()[0]
    assert first_line.endswith(" COMPLETED")
    run_id = first_line.split()[0]

    shown = _cli("runs", "show", run_id, cwd=dev_dir)
    assert "attempt 2/4" in shown.stdout, shown.stdout
    assert (dev_dir / ".outlast" / "outlast.db").exists()
    assert (dev_dir / ".outlast" / "fake-services.db").exists()


def test_kill_9_mid_export_then_restart_resumes_from_the_last_page(
    dev: Any, dev_dir: Path
) -> None:
    proc, _ = dev()
    triggered = _cli("trigger", "export-invoices", "--payload",
                     '{"rows": 4000, "page_size": 200, "page_delay": 0.1}', cwd=dev_dir)
    assert triggered.returncode == 0, triggered.stderr
    run_id = triggered.stdout.strip()

    store = open_store(f"sqlite:///{dev_dir}/.outlast/outlast.db")
    try:
        deadline = time.monotonic() + 30
        while len(store.journal(run_id)) < 5:
            assert time.monotonic() < deadline, "the export did not get going"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # no cleanup, no handback: a crash
        proc.wait()
        done_before = {j.key for j in store.journal(run_id)}
        assert len(done_before) < 20, "the export finished before it could be killed"

        dev()  # the new process finds the dead worker's file lock free and re-queues the run
        deadline = time.monotonic() + 60
        while not (run := store.get_run("dev", run_id)) or not run.is_final:
            assert time.monotonic() < deadline, "the export did not finish after the restart"
            time.sleep(0.1)
        journal = store.journal(run_id)
    finally:
        store.close()

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.attempt == 2  # the lost attempt counted
    attempts = {j.key: j.attempt for j in journal}
    assert all(attempts[k] == 1 for k in done_before)  # never exported again
    assert all(attempts[k] == 2 for k in attempts.keys() - done_before)
    path = Path(run.output["path"])
    if not path.is_absolute():
        path = dev_dir / path
    assert read_invoice_ids(path) == [f"INV-{n:06d}" for n in range(1, 4_001)]
    assert run.metadata["progress"] == 1.0


def test_partner_callback_over_http_resumes_the_video_render(dev: Any, dev_dir: Path) -> None:
    """The callback URL the partner gets is real: a POST to it (no API key; the signed URL
    is the credential) completes the token and the run finishes."""
    _, api = dev()
    triggered = _cli("trigger", "render-video", "--payload", '{"video_id": "vid_http"}',
                     cwd=dev_dir)
    assert triggered.returncode == 0, triggered.stderr
    run_id = triggered.stdout.strip()
    store = open_store(f"sqlite:///{dev_dir}/.outlast/outlast.db")
    try:
        deadline = time.monotonic() + 30
        while (run := store.get_run("dev", run_id)) is None or run.status != RunStatus.WAITING:
            assert time.monotonic() < deadline, "the render never started waiting"
            time.sleep(0.05)
        with sqlite3.connect(dev_dir / ".outlast" / "fake-services.db") as db:
            [(callback_url,)] = db.execute("SELECT callback_url FROM render_jobs").fetchall()
        assert callback_url.startswith(f"{api}/api/v1/waitpoints/tokens/")
        answer = {"status": "done", "url": "https://cdn.example.com/vid_http.mp4"}
        assert httpx.post(callback_url, json=answer, timeout=10).status_code == 200
        tampered = callback_url[:-4] + ("0000" if not callback_url.endswith("0000") else "1111")
        assert httpx.post(tampered, json=answer, timeout=10).status_code == 401
        deadline = time.monotonic() + 30
        while not (run := store.get_run("dev", run_id)) or not run.is_final:
            assert time.monotonic() < deadline, "the render did not resume"
            time.sleep(0.05)
    finally:
        store.close()
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"video_id": "vid_http", "url": "https://videos.example.com/vid_http"}


# -- the docs: the tutorial runs, the reference covers every name and flag ----------------------

DOCS = ROOT / "docs"


def tutorial_module(tmp_path: Path) -> Any:
    """docs/tutorial.md's code blocks that start with ``# tutorial.py``, as one module."""
    text = (DOCS / "tutorial.md").read_text()
    blocks = re.findall(r"```python\n(# tutorial\.py.*?)```", text, flags=re.S)
    assert len(blocks) == 4, "the tutorial builds tutorial.py in four blocks"
    path = tmp_path / "docs_tutorial.py"
    path.write_text("\n".join(blocks))
    spec = importlib.util.spec_from_file_location("docs_tutorial", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_tutorial_code_works(
    store: Store, client: Client, clock: FakeClock, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tut = tutorial_module(tmp_path)
    tasks = {t.id: t for t in (tut.receipt, tut.checkout, tut.order_reminder,
                               tut.order_approval, tut.notify_customer, tut.close_day)}
    worker = Worker(store, tasks=tasks, concurrency=20)
    try:
        run_ids = {
            "receipt": client.trigger("receipt", {"order_id": "A-1", "amount_cents": 1250}).id,
            "checkout": client.trigger("checkout", {"order_id": "A-2", "amount_cents": 1250}).id,
            "abort": client.trigger("checkout", {"order_id": "A-3", "amount_cents": 0}).id,
            "reminder": client.trigger("order-reminder", {"order_id": "A-4",
                                                          "amount_cents": 1}).id,
            "approval": client.trigger("order-approval", {"order_id": "A-5",
                                                          "amount_cents": 1}).id,
            "close": client.trigger("close-day", {"day": "2025-11-28", "orders": 3}).id,
        }
        approval = await drive(worker, client, clock, run_ids["approval"], until=WAITING)
        client.complete_token(approval.metadata["token"], {"approved": True})
        runs = {name: await drive(worker, client, clock, run_id, tick=5.0)
                for name, run_id in run_ids.items()}
    finally:
        await worker.shutdown()

    assert runs["receipt"].output == "Receipt for A-1: 12.50 EUR"
    assert runs["checkout"].output == {"reservation": "rsv_A-2", "charge": "ch_A-2"}
    assert runs["checkout"].attempt == 2
    assert attempts_by_key(client, run_ids["checkout"]) == {"reserve-stock": 1, "charge": 2}
    assert runs["abort"].status == RunStatus.FAILED
    assert runs["abort"].error is not None and runs["abort"].error["code"] == "aborted"
    assert runs["reminder"].output == "reminded the customer about A-4"
    assert runs["approval"].output == "approved"
    assert runs["close"].output == {"notified": 3, "summary": "3 orders on 2025-11-28",
                                    "first_receipt": "Receipt for 2025-11-28-1: 1.00 EUR"}


def test_the_python_reference_lists_every_public_name() -> None:
    import outlast

    text = (DOCS / "reference" / "python-api.md").read_text()
    missing = [name for name in outlast.__all__ if f"`{name}" not in text]
    assert missing == [], f"document these in docs/reference/python-api.md: {missing}"


def test_names_moved_out_of_the_package_root_still_import_from_it() -> None:
    import outlast
    import outlast.worker
    from outlast import HookEvent, Worker

    assert (Worker, HookEvent) == (outlast.worker.Worker, outlast.worker.HookEvent)
    assert "Worker" not in outlast.__all__ and "HookEvent" not in outlast.__all__
    with pytest.raises(AttributeError, match="no_such_name"):
        outlast.no_such_name  # noqa: B018


def test_the_cli_reference_covers_every_command_and_flag() -> None:
    from outlast.cli import build_parser

    text = (DOCS / "reference" / "cli.md").read_text()
    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            else:
                missing.extend(f"{path}: {opt}" for opt in action.option_strings
                               if opt.startswith("--") and opt not in text)
        if f"`{path}`" not in text:
            missing.append(path)

    walk(build_parser(), "outlast")
    assert missing == [], f"document these in docs/reference/cli.md: {missing}"


def test_doc_links_and_cited_tests_exist() -> None:
    """Relative links in README.md and docs/ resolve, and every test the docs cite exists."""
    tests_text = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    problems: list[str] = []
    for page in [ROOT / "README.md", *DOCS.glob("**/*.md")]:
        text = page.read_text()
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            target = link.split("#")[0]
            if target and not link.startswith(("http://", "https://")) and not (
                page.parent / target
            ).exists():
                problems.append(f"{page.name}: broken link {link}")
        for name in re.findall(r"::(test_\w+)", text):
            if f"def {name}(" not in tests_text:
                problems.append(f"{page.name}: cites a test that does not exist: {name}")
    assert problems == []
