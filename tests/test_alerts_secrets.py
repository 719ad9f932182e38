"""Alert rules' signing secrets sealed at rest, on SQLite and PostgreSQL: the table holds a
sealed token, never the plaintext, and a delivery is signed with the original secret (the
``standardwebhooks`` package verifies it); a rule stored before secrets were sealed (its
plaintext ``whsec_…`` in the row) still delivers and is sealed by the first process with
the key; a sender without the key (or with another one) leaves the delivery pending with
no attempt counted, logs one error per rule and never the secret, and sends once the key
is back; creating a rule without a key is refused, in Python, over HTTP and on the command
line, and works with ``outlast dev``'s key file beside a SQLite database."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from outlast import _secret_box
from outlast._alerts import AlertLoop, Sender, create_rule, new_secret, register_event
from outlast._clock import FakeClock
from outlast.cli import main
from outlast.server import create_app
from outlast.server.auth import create_key
from outlast.store import open_store
from outlast.store.base import Store
from tests.alert_receiver import Receiver

EVENT = "test.sealed"
register_event(EVENT, "raised by tests/test_alerts_secrets.py")


def stored(store: Store) -> dict[str, str]:
    """Each rule's secret column as the table holds it."""
    raw: Any = store
    with raw._transaction() as tx:
        return {r["id"]: r["secret"]
                for r in raw._raw(tx, "SELECT id, secret FROM alert_rules", {})}


def store_plaintext(store: Store, rule_id: str, secret: str) -> None:
    """The row as a rule created before secrets were sealed left it."""
    raw: Any = store
    with raw._transaction() as tx:
        raw._raw(tx, "UPDATE alert_rules SET secret = :s WHERE id = :id",
                 {"s": secret, "id": rule_id})


def test_the_secret_is_sealed_at_rest_and_signs_with_the_original(
    store: Store, now_clock: FakeClock, receiver: Receiver, encryption_key: str
) -> None:
    rule, secret = create_rule(store, now_clock, "dev", event=EVENT,
                               webhook_url=receiver.url)
    sealed = stored(store)[rule.id]
    assert sealed != secret and secret.removeprefix("whsec_") not in sealed
    assert not sealed.startswith("whsec_")
    assert _secret_box.SecretBox([encryption_key]).open(sealed) == secret
    assert store.raise_alert("dev", EVENT, {"n": 1}) == 1
    assert Sender(store, now_clock).send_due() == 1
    [got] = receiver.received
    assert Webhook(secret).verify(got.body, got.headers)["data"] == {"n": 1}
    assert stored(store)[rule.id] == sealed  # opened to sign, never written back


def test_a_rule_from_before_sealing_delivers_and_gets_sealed(
    store: Store, now_clock: FakeClock, receiver: Receiver, encryption_key: str
) -> None:
    firing, _ = create_rule(store, now_clock, "dev", event=EVENT, webhook_url=receiver.url)
    quiet, _ = create_rule(store, now_clock, "dev", event="no_worker",
                           webhook_url=receiver.url)
    old, old_quiet = new_secret(), new_secret()
    store_plaintext(store, firing.id, old)
    store_plaintext(store, quiet.id, old_quiet)
    store.raise_alert("dev", EVENT, {"n": 2})
    assert Sender(store, now_clock).send_due() == 1
    [got] = receiver.received
    Webhook(old).verify(got.body, got.headers)  # the secret its receiver has
    box = _secret_box.box(store.url)
    now = stored(store)
    assert old not in now.values() and old_quiet not in now.values()  # every rule sealed
    assert box.open(now[firing.id]) == old and box.open(now[quiet.id]) == old_quiet
    store.raise_alert("dev", EVENT, {"n": 3})
    assert Sender(store, now_clock).send_due() == 1  # now from the sealed form
    Webhook(old).verify(receiver.received[1].body, receiver.received[1].headers)
    assert store.seal_alert_secrets(box.seal) == 0  # nothing left; a race seals once
    # A rule that never fires is sealed by the scheduler's first scan.
    store_plaintext(store, quiet.id, old_quiet)
    AlertLoop(store, now_clock).scan()
    assert box.open(stored(store)[quiet.id]) == old_quiet


def test_a_sender_without_the_key_leaves_deliveries_pending_and_logs_no_secret(
    store: Store, now_clock: FakeClock, receiver: Receiver, encryption_key: str,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    rule, secret = create_rule(store, now_clock, "dev", event=EVENT, webhook_url=receiver.url)
    legacy, old = create_rule(store, now_clock, "dev", event=EVENT, webhook_url=receiver.url)
    store_plaintext(store, legacy.id, old)
    sealed = stored(store)[rule.id]
    store.raise_alert("dev", EVENT, {"n": 1})
    store.raise_alert("dev", EVENT, {"n": 2})
    monkeypatch.delenv("OUTLAST_ENCRYPTION_KEY")
    sender = Sender(store, now_clock)
    caplog.set_level(logging.INFO, logger="outlast")
    assert sender.send_due(limit=10) == 2  # the plaintext rule's two: sent as before
    now_clock.advance(sender.lease + 1)
    assert sender.send_due(limit=10) == 0  # the sealed rule's two: due again, not sent
    assert {r.headers["webhook-id"] for r in receiver.received} == {
        d.id for d in store.list_alert_deliveries("dev", legacy.id)}
    waiting = store.list_alert_deliveries("dev", rule.id)
    assert [(d.status, d.attempts, d.attempt_log) for d in waiting] == [("pending", 0, [])] * 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and rule.id in errors[0].getMessage()
    assert "OUTLAST_ENCRYPTION_KEY" in errors[0].getMessage()
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and legacy.id in warned[0].getMessage()  # plaintext, unsealed
    assert stored(store)[legacy.id] == old
    # Another key cannot open it either: the same, one error from this sender.
    monkeypatch.setenv("OUTLAST_ENCRYPTION_KEY", _secret_box.new_key())
    other = Sender(store, now_clock)
    now_clock.advance(sender.lease + 1)
    assert other.send_due() == 0
    assert "cannot be opened" in caplog.text
    for text in (secret, secret.removeprefix("whsec_"), old.removeprefix("whsec_"), sealed):
        assert text not in caplog.text
    # The key back: the waiting deliveries go out, signed with the original secret.
    monkeypatch.setenv("OUTLAST_ENCRYPTION_KEY", encryption_key)
    now_clock.advance(sender.lease + 1)
    assert sender.send_due() == 2
    for got in receiver.received[-2:]:
        Webhook(secret).verify(got.body, got.headers)


async def test_no_key_no_rule(
    store: Store, db_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("OUTLAST_ENCRYPTION_KEY", raising=False)
    monkeypatch.delenv("OUTLAST_ENCRYPTION_KEY_FILE", raising=False)
    if db_url.startswith("sqlite"):  # no dev key file beside the test's database
        assert not (Path(db_url.removeprefix("sqlite:///")).parent / "encryption-key").exists()
    with pytest.raises(_secret_box.EncryptionKeyMissing):
        create_rule(store, store.clock, "dev", event=EVENT, webhook_url="https://x.example/")
    assert main(["alerts", "create", "--on", EVENT, "--webhook", "https://x.example/",
                 "--database-url", db_url]) == 2
    assert "error [encryption_key_missing]" in capsys.readouterr().err
    app = create_app(store, dashboard=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://outlast.test",
        headers={"Authorization": f"Bearer {create_key(store, 'dev').secret}"},
    ) as http:
        r = await http.post("/api/v1/alerts", json={"on": EVENT, "webhook": "https://x/"})
        assert r.status_code == 500 and r.json()["code"] == "encryption_key_missing"
        assert "OUTLAST_ENCRYPTION_KEY" in r.json()["error"]
    assert store.list_alert_rules("dev") == []


def test_outlast_devs_key_file_beside_sqlite_seals_and_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    monkeypatch.delenv("OUTLAST_ENCRYPTION_KEY", raising=False)
    monkeypatch.delenv("OUTLAST_ENCRYPTION_KEY_FILE", raising=False)
    url = f"sqlite:///{tmp_path}/.outlast/outlast.db"
    assert _secret_box.ensure_dev_key(url) is not None  # what `outlast dev` does
    store = open_store(url)
    store.migrate()
    try:
        rule, secret = create_rule(store, store.clock, "dev", event=EVENT,
                                   webhook_url=receiver.url)
        assert secret not in stored(store)[rule.id]
        store.raise_alert("dev", EVENT, {"n": 1})
        assert Sender(store, store.clock).send_due() == 1
        Webhook(secret).verify(receiver.received[0].body, receiver.received[0].headers)
    finally:
        store.close()
