"""Alerts: rules that send a signed webhook when runs fail or time out, a queue backs up or
no worker serves queued runs, and the sender that delivers them from the store's outbox.

Deliveries follow Standard Webhooks (https://www.standardwebhooks.com): headers
``webhook-id`` (stable across retries: a receiver dedupes by it), ``webhook-timestamp``
and ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed with the
rule's ``whsec_`` secret, shown once when the rule is created.

Secrets at rest: signing needs the secret itself, so it cannot be hashed; it is stored
sealed with the encryption key (``_secret_box``: ``OUTLAST_ENCRYPTION_KEY``, its ``_FILE``
twin, or the ``encryption-key`` file beside a SQLite database that ``outlast dev`` makes).
Creating a rule without a key is refused (``EncryptionKeyMissing``); the sender opens the
secret just before signing, and without the key (or with the wrong one) it logs one error
per rule and leaves the delivery pending, due again when its lease lapses, no attempt
counted. Rules created before secrets were sealed hold the plaintext ``whsec_…``: they
still deliver, and the first scheduler (or sender) with the key seals them
(``seal_legacy_secrets``).

Durability: an alert is a row in ``alert_deliveries`` written in the transaction that saw
its event (the failure scan, the condition check, or ``raise_alert``). A sender claims a
due row for a short lease, posts it outside any transaction, and records the attempt; a
sender killed mid-post leaves the row to be claimed again when its lease lapses, so an
alert is delivered at least once. Failed posts retry with backoff (``BACKOFF``).

Other features raise their own kinds with ``register_event("usage.spike")`` (so rules can
be created for it) and ``store.raise_alert(env, "usage.spike", {...})``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from . import _secret_box
from ._clock import Clock
from ._errors import ConfigurationError, ValidationError
from ._ids import new_id
from ._serde import dumps
from .store._alerts_base import AlertRule, AlertStore, DueDelivery

log = logging.getLogger(__name__)

# Delay before retry n (1-based) of a failed post; past the last, the delivery has failed.
BACKOFF: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 3 * 3600.0, 6 * 3600.0)
MAX_ATTEMPTS = len(BACKOFF) + 1
POST_TIMEOUT = 10.0
FORMATS = ("json", "slack")

_EVENTS: dict[str, str] = {
    "run.failed": "a run failed (its last attempt)",
    "run.timed_out": "a run passed its max_duration",
    "queue.backlog": "a queue's oldest queued run is older than --older-than (default 5m)",
    "no_worker": "runs queued longer than --older-than (default 1m) with no live worker "
    "serving their task",
    # raised by the usage fold's spike check (outlast/_usage.py, SpikeAlerts)
    "usage.spike": "a task ran more than 3 times its trailing median today (runs or "
    "run-minutes), with the likely cause; once per task and day",
}


def register_event(name: str, description: str = "") -> None:
    """Let rules be created for an alert kind another feature raises with
    ``store.raise_alert``."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*", name):
        raise ValueError(f"alert event names are dotted lowercase words, not {name!r}")
    _EVENTS.setdefault(name, description)


def events() -> dict[str, str]:
    return dict(_EVENTS)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")


def parse_duration(text: str, field: str = "older_than") -> float:
    """``90``, ``90s``, ``5m``, ``2h``, ``1d`` in seconds."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise ValidationError(f"{field}: expected a duration like 90s, 5m or 2h, got {text!r}",
                              field=field)
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def create_rule(
    store: AlertStore,
    clock: Clock,
    env: str,
    *,
    event: str,
    webhook_url: str,
    format: str = "json",
    task_id: str | None = None,
    queue: str | None = None,
    older_than: float | None = None,
    box: _secret_box.SecretBox | None = None,
) -> tuple[AlertRule, str]:
    """Validate and store a rule, its secret sealed with ``box`` (by default the
    configured key's; ``EncryptionKeyMissing`` without one); return it with its secret
    (the only time it is seen)."""
    if event not in _EVENTS:
        raise ValidationError(f"on: unknown event {event!r}; one of {', '.join(_EVENTS)}",
                              field="on")
    parts = urlsplit(webhook_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValidationError("webhook: an http(s) URL is required", field="webhook")
    if format not in FORMATS:
        raise ValidationError(f"format: one of {', '.join(FORMATS)}", field="format")
    if older_than is not None and older_than < 0:
        raise ValidationError("older_than: must not be negative", field="older_than")
    rule = AlertRule(
        id=new_id("alert"),
        env=env,
        event=event,
        task_id=task_id or None,
        queue=queue or None,
        older_than=older_than,
        webhook_url=webhook_url,
        format=format,
        created_at=clock.now(),
    )
    box = box or _secret_box.box(store.url)
    secret = new_secret()
    store.create_alert_rule(rule, box.seal(secret))
    return rule, secret


def seal_legacy_secrets(store: AlertStore) -> int:
    """Seal the plaintext secrets of rules created before secrets were sealed, if this
    process has the encryption key; return how many (0 without a key)."""
    try:
        box = _secret_box.box(store.url)
    except ConfigurationError:
        return 0  # the sender warns when such a rule delivers
    sealed = store.seal_alert_secrets(box.seal)
    if sealed:
        log.info("sealed the signing secrets of %d alert rules stored in plaintext", sealed)
    return sealed


def render(format: str, payload: dict[str, Any]) -> bytes:
    """The body of a delivery. Deterministic, so every retry sends the same bytes."""
    if format != "slack":
        return dumps(payload).encode()
    return dumps({"text": summary_line(payload)}).encode()


def summary_line(payload: dict[str, Any]) -> str:
    data, kind, env = payload.get("data", {}), payload.get("type"), payload.get("env")
    if kind == "alert.summary":
        return (f"[outlast {env}] {data.get('count')} more {data.get('event')} alerts in "
                f"{int(data.get('window_seconds', 0))} s (summary of a storm)")
    if kind in ("run.failed", "run.timed_out"):
        error = data.get("error") or {}
        return (f"[outlast {env}] {kind}: run {data.get('run_id')} of task "
                f"{data.get('task_id')}: {error.get('type')}: {error.get('message')}")
    if kind == "queue.backlog":
        return (f"[outlast {env}] queue {data.get('queue')} has {data.get('queued')} queued "
                f"runs, the oldest {int(data.get('oldest_age', 0))} s old")
    if kind == "no_worker":
        return (f"[outlast {env}] no worker serves task {data.get('task_id')}: "
                f"{data.get('queued')} runs queued")
    if kind == "usage.spike":
        causes = data.get("causes") or []
        return (f"[outlast {env}] usage spike: {data.get('summary')}"
                + (f"; {causes[0]}" if causes else ""))
    return f"[outlast {env}] {kind}: {dumps(data)}"


@dataclass
class Sender:
    """Delivers due alerts; the scheduler's tick calls ``send_due`` (in a thread)."""

    store: AlertStore
    clock: Clock
    http: httpx.Client | None = None
    lease: float = 30.0
    # Rules whose secret this process could not open (or saw in plaintext without a key
    # to seal it), each logged once.
    _logged: set[str] = field(default_factory=set, init=False, repr=False)

    def send_due(self, limit: int = 20) -> int:
        """Post every due delivery once; return how many were delivered."""
        # One claim per post: a lease covers one post's timeout, however slow the ones
        # before it were.
        due = self.store.due_deliveries(limit=1, lease=self.lease)
        if not due:
            return 0  # the usual tick: no HTTP client made
        http = self.http or httpx.Client(timeout=POST_TIMEOUT)
        delivered = 0
        try:
            for i in range(limit):
                if i:
                    due = self.store.due_deliveries(limit=1, lease=self.lease)
                if not due:
                    break
                delivered += self._send(http, due[0])
            return delivered
        finally:
            if self.http is None:
                http.close()

    def _secret(self, d: DueDelivery) -> str | None:
        """The rule's signing secret, opened; None (logged once per rule, never the
        secret) when this process cannot open it."""
        if d.legacy:  # stored before secrets were sealed: usable as is; seal it now
            if not seal_legacy_secrets(self.store) and d.rule_id not in self._logged:
                self._logged.add(d.rule_id)
                log.warning("alert rule %s: its signing secret is stored in plaintext "
                            "(created before secrets were sealed); give this process "
                            "OUTLAST_ENCRYPTION_KEY to seal it", d.rule_id)
            return d.secret
        try:
            secret = _secret_box.box(self.store.url).open(d.secret)
        except ConfigurationError as exc:  # no key, a bad key, or not the key it was sealed with
            if d.rule_id not in self._logged:
                self._logged.add(d.rule_id)
                log.error("alert rule %s: cannot open its signing secret, so its deliveries "
                          "wait (pending, retried every %d s): %s", d.rule_id,
                          int(self.lease), exc)
            return None
        self._logged.discard(d.rule_id)
        return secret

    def _send(self, http: httpx.Client, d: DueDelivery) -> int:
        secret = self._secret(d)
        if secret is None:
            return 0  # still claimed: due again when the lease lapses, no attempt counted
        body = render(d.format, d.payload)
        stamp = int(self.clock.now())
        headers = {
            "content-type": "application/json",
            "webhook-id": d.id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(secret, d.id, stamp, body),
            "user-agent": "outlast-alerts",
        }
        started = time.monotonic()
        code: int | None = None
        error: str | None = None
        try:
            response = http.post(d.url, content=body, headers=headers)
            code = response.status_code
            if not 200 <= code < 300:
                error = f"HTTP {code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        n = d.attempts + 1
        retry_at = None
        if error is not None and n < MAX_ATTEMPTS:
            retry_at = self.clock.now() + BACKOFF[n - 1]
        if error is not None:
            # The URL may carry a token (Slack's do): log the delivery id, not the URL.
            log.warning("alert %s attempt %d failed: %s", d.id, n, error)
        self.store.record_alert_attempt(
            d.id,
            status_code=code,
            error=error,
            duration=time.monotonic() - started,
            retry_at=retry_at,
        )
        return 1 if error is None else 0


class AlertLoop:
    """The scheduler's part in alerts: group new failures (and queue their alerts) about
    once a second and check backlog and no-worker conditions every few seconds
    (``scan``); the scheduler sends what is due (``sender.send_due``) beside its ticks,
    so a slow receiver never delays timers."""

    def __init__(
        self,
        store: AlertStore,
        clock: Clock,
        *,
        scan_every: float = 1.0,
        conditions_every: float = 5.0,
    ) -> None:
        self.store = store
        self.sender = Sender(store, clock)
        self.scan_every = scan_every
        self.conditions_every = conditions_every
        self._scanned = self._checked = self._sent = 0.0
        self._pruned = time.monotonic()  # not at start: processes restart often
        self._sealed = False  # plaintext secrets from before sealing: once per process

    def send_due_now(self, every: float = 1.0) -> bool:
        """Whether the scheduler should look for due deliveries now (about once a
        second: an alert a second late is on time, and an idle tick stays free)."""
        now = time.monotonic()
        if now - self._sent < every:
            return False
        self._sent = now
        return True

    def scan(self) -> None:
        now = time.monotonic()
        if now - self._scanned >= self.scan_every:
            self._scanned = now
            while self.store.scan_failures().failures >= 500:  # a storm: catch up now
                pass
        if now - self._checked >= self.conditions_every:
            self._checked = now
            self.store.check_alert_conditions()
        if now - self._pruned >= 3600.0:
            self._pruned = now
            self.store.prune_alerts()
        if not self._sealed:
            self._sealed = True
            seal_legacy_secrets(self.store)
