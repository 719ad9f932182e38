"""The outside world the examples talk to: a payment API, an account service, an email
provider, a video-rendering partner and an admin inbox. All fake.

They keep their state in one SQLite file, ``<EXAMPLES_DATA_DIR>/fake-services.db``
(``.outlast/`` by default, beside the dev database), so what they remember holds across
processes: kill the worker and the payment API still knows what it charged.

They behave like the real services in the ways that matter to durability:

- the payment API and the email provider deduplicate requests by idempotency key, as
  Stripe and most email APIs do, so a step that runs again (C3) has no second effect;
- the account service times out on the first call for each customer;
- the email provider answers 503 for about one request in ten, once per request.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("examples.fake_services")


def data_dir() -> Path:
    """Where the examples write: exports and the fake services' state."""
    return Path(os.environ.get("EXAMPLES_DATA_DIR", ".outlast"))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (name TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS charges (
    idempotency_key TEXT PRIMARY KEY, id TEXT NOT NULL, customer TEXT NOT NULL,
    amount_cents INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS refunds (
    idempotency_key TEXT PRIMARY KEY, id TEXT NOT NULL, order_id TEXT NOT NULL,
    amount_cents INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    email TEXT PRIMARY KEY, id TEXT NOT NULL, plan TEXT NOT NULL, organization_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS emails (
    idempotency_key TEXT PRIMARY KEY, id TEXT NOT NULL, recipient TEXT NOT NULL,
    subject TEXT NOT NULL, body TEXT NOT NULL, sent_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS render_jobs (
    id TEXT PRIMARY KEY, video_id TEXT NOT NULL, preset TEXT NOT NULL,
    callback_url TEXT NOT NULL, submitted_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS published_videos (
    video_id TEXT PRIMARY KEY, url TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS admin_inbox (
    token_id TEXT PRIMARY KEY, subject TEXT NOT NULL, body TEXT NOT NULL,
    received_at REAL NOT NULL);
"""

_ready: set[str] = set()
_ready_lock = threading.Lock()


@contextlib.contextmanager
def _db() -> Iterator[sqlite3.Connection]:
    path = data_dir() / "fake-services.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        key = str(path.resolve())
        if key not in _ready:
            with _ready_lock:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
                _ready.add(key)
        conn.execute("BEGIN IMMEDIATE")
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()


def _id(prefix: str, *parts: object) -> str:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]
    return f"{prefix}_{digest}"


def count_call(name: str) -> int:
    """Count a call under ``name`` and return how many there have been, this one included."""
    with _db() as db:
        db.execute(
            "INSERT INTO calls (name, count) VALUES (?, 1) "
            "ON CONFLICT (name) DO UPDATE SET count = count + 1",
            (name,),
        )
        return int(db.execute("SELECT count FROM calls WHERE name = ?", (name,)).fetchone()[0])


def calls(name: str) -> int:
    with _db() as db:
        row = db.execute("SELECT count FROM calls WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0


class ServiceUnavailable(Exception):
    """A 503 from an outside service: worth retrying later."""


# -- payments -----------------------------------------------------------------------------------


def charge(customer: str, amount_cents: int, *, idempotency_key: str) -> dict[str, Any]:
    """Charge a card. A request with a key seen before returns the first charge again."""
    with _db() as db:
        db.execute(
            "INSERT INTO charges (idempotency_key, id, customer, amount_cents, created_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
            (idempotency_key, _id("ch", idempotency_key), customer, amount_cents, time.time()),
        )
        row = db.execute(
            "SELECT id, customer, amount_cents FROM charges WHERE idempotency_key = ?",
            (idempotency_key,),
        ).fetchone()
    return dict(row)


def charges(customer: str | None = None) -> list[dict[str, Any]]:
    with _db() as db:
        rows = db.execute(
            "SELECT * FROM charges WHERE ? IS NULL OR customer = ? ORDER BY created_at",
            (customer, customer),
        ).fetchall()
    return [dict(r) for r in rows]


def refund(order_id: str, amount_cents: int, *, idempotency_key: str) -> dict[str, Any]:
    with _db() as db:
        db.execute(
            "INSERT INTO refunds (idempotency_key, id, order_id, amount_cents, created_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
            (idempotency_key, _id("re", idempotency_key), order_id, amount_cents, time.time()),
        )
        row = db.execute(
            "SELECT id, order_id, amount_cents FROM refunds WHERE idempotency_key = ?",
            (idempotency_key,),
        ).fetchone()
    return dict(row)


def refunds(order_id: str | None = None) -> list[dict[str, Any]]:
    with _db() as db:
        rows = db.execute(
            "SELECT * FROM refunds WHERE ? IS NULL OR order_id = ? ORDER BY created_at",
            (order_id, order_id),
        ).fetchall()
    return [dict(r) for r in rows]


# -- accounts -----------------------------------------------------------------------------------


def provision_account(email: str, plan: str, organization_id: str) -> dict[str, Any]:
    """Create the customer's account. Times out on the first call for each email."""
    if count_call(f"provision:{email}") == 1:
        raise ServiceUnavailable("accounts service timed out (it always does the first time)")
    with _db() as db:
        db.execute(
            "INSERT INTO accounts (email, id, plan, organization_id) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (email) DO NOTHING",
            (email, _id("acct", email), plan, organization_id),
        )
        row = db.execute("SELECT id, plan FROM accounts WHERE email = ?", (email,)).fetchone()
    return dict(row)


# -- email --------------------------------------------------------------------------------------

EMAIL_LATENCY = 0.005  # seconds per send; tests raise it to make the queue's limit visible
EMAIL_503_PERCENT = 10  # share of requests answered 503 the first time they are sent

_stats_lock = threading.Lock()
email_stats = {"in_flight": 0, "max_in_flight": 0}


def user(user_id: int) -> dict[str, Any]:
    """The user directory: deterministic, so 50,000 users need no table."""
    return {"id": user_id, "email": f"user{user_id}@example.com", "name": f"User {user_id}"}


def send_email(
    to: str, subject: str, body: str, *, idempotency_key: str, flaky: bool = False
) -> str:
    """Send an email; returns the provider's message id. A repeated key sends nothing new.

    With ``flaky``, about one request in ten is answered 503 the first time it is made."""
    with _stats_lock:
        email_stats["in_flight"] += 1
        email_stats["max_in_flight"] = max(email_stats["max_in_flight"], email_stats["in_flight"])
    try:
        time.sleep(EMAIL_LATENCY)
        unlucky = int(hashlib.sha256(idempotency_key.encode()).hexdigest()[:8], 16) % 100
        if flaky and unlucky < EMAIL_503_PERCENT and count_call(f"503:{idempotency_key}") == 1:
            raise ServiceUnavailable("503 Service Unavailable: try again later")
        with _db() as db:
            db.execute(
                "INSERT INTO emails (idempotency_key, id, recipient, subject, body, sent_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
                (idempotency_key, _id("msg", idempotency_key), to, subject, body, time.time()),
            )
            row = db.execute(
                "SELECT id FROM emails WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
        return str(row[0])
    finally:
        with _stats_lock:
            email_stats["in_flight"] -= 1


def sent_emails(subject: str | None = None) -> list[dict[str, Any]]:
    with _db() as db:
        rows = db.execute(
            "SELECT id, recipient, subject, sent_at FROM emails "
            "WHERE ? IS NULL OR subject = ? ORDER BY sent_at",
            (subject, subject),
        ).fetchall()
    return [dict(r) for r in rows]


# -- the video partner ------------------------------------------------------------------------


def submit_render(video_id: str, preset: str, callback_url: str) -> str:
    """Hand a render job to the partner, who will POST the result to ``callback_url``."""
    job_id = _id("job", video_id, callback_url)
    with _db() as db:
        db.execute(
            "INSERT INTO render_jobs (id, video_id, preset, callback_url, submitted_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (job_id, video_id, preset, callback_url, time.time()),
        )
    log.info("partner accepted render job %s for %s; it will call back %s",
             job_id, video_id, callback_url)
    return job_id


def render_jobs(video_id: str | None = None) -> list[dict[str, Any]]:
    with _db() as db:
        rows = db.execute(
            "SELECT * FROM render_jobs WHERE ? IS NULL OR video_id = ? ORDER BY submitted_at",
            (video_id, video_id),
        ).fetchall()
    return [dict(r) for r in rows]


def publish_video(video_id: str, url: str) -> str:
    with _db() as db:
        db.execute(
            "INSERT INTO published_videos (video_id, url) VALUES (?, ?) "
            "ON CONFLICT (video_id) DO UPDATE SET url = excluded.url",
            (video_id, url),
        )
    return f"https://videos.example.com/{video_id}"


# -- the admin inbox ----------------------------------------------------------------------------


def notify_admin(token_id: str, subject: str, body: str) -> None:
    """Put an approval request in the admins' inbox (one per token, however often asked)."""
    with _db() as db:
        db.execute(
            "INSERT INTO admin_inbox (token_id, subject, body, received_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (token_id) DO NOTHING",
            (token_id, subject, body, time.time()),
        )
    log.info("admin inbox: %s (token %s)", subject, token_id)


def admin_inbox() -> list[dict[str, Any]]:
    with _db() as db:
        rows = db.execute("SELECT * FROM admin_inbox ORDER BY received_at").fetchall()
    return [dict(r) for r in rows]
