"""Incoming webhooks on both backends: requests signed with the providers' own libraries
(``stripe``, ``standardwebhooks``) and GitHub's HMAC are verified on the raw body and
publish one event (a subscribed task runs); a tampered body, a wrong secret, a stale
timestamp or a missing header is a 401 that stores nothing; a redelivery deduplicates;
a rotated secret's predecessor is accepted until the overlap ends (on the fake clock);
secrets never appear in logs or output."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import standardwebhooks
import stripe

from outlast import Worker, _metrics, _secret_box, _webhooks, task
from outlast._clock import FakeClock
from outlast.cli import main
from outlast.client import Client
from outlast.server import create_app
from outlast.server.auth import create_key
from outlast.store.base import Store

STRIPE_SECRET = "whsec_stripe_test_0123456789abcdef"
GITHUB_SECRET = "gh-webhook-secret-42"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-key-32-bytes!!").decode()
HMAC_SECRET = "plain-hmac-secret-7"
SECRETS = (STRIPE_SECRET, GITHUB_SECRET, STANDARD_SECRET, HMAC_SECRET)

TABLES = ("events", "event_deliveries", "webhook_deliveries", "runs")


@task(id="wh-invoice-paid", on=["stripe.invoice.paid"])
async def invoice_paid(payload: dict[str, Any]) -> str:
    return f"paid {payload['data']['object']['id']}"


@task(id="wh-github-push", on=["github.push"])
async def github_push(payload: dict[str, Any]) -> str:
    return payload["ref"]


@pytest.fixture(autouse=True)
def secret_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = _secret_box.new_key()
    monkeypatch.setenv("OUTLAST_ENCRYPTION_KEY", key)
    monkeypatch.delenv("OUTLAST_ENCRYPTION_KEY_FILE", raising=False)
    _webhooks.refusals.clear()
    return key


class SyncASGI(httpx.BaseTransport):
    """A synchronous transport into the ASGI app, through an event loop of its own (the
    tests' async workers run on the test's loop)."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def forward() -> httpx.Response:
            inner = httpx.Request(request.method, request.url, headers=request.headers,
                                  content=request.read())
            resp = await self.inner.handle_async_request(inner)
            return httpx.Response(resp.status_code, headers=resp.headers,
                                  content=await resp.aread())

        return asyncio.run_coroutine_threadsafe(forward(), self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture
def http(store: Store) -> Iterator[httpx.Client]:
    store.publish_tasks("dev", [invoice_paid.definition(), github_push.definition()])
    key = create_key(store, "dev").secret
    with httpx.Client(transport=SyncASGI(create_app(store, dashboard=False)),
                      base_url="http://outlast.test",
                      headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def counts(store: Store) -> dict[str, int]:
    raw: Any = store
    with raw._transaction() as tx:
        return {t: int(raw._raw(tx, f"SELECT COUNT(*) AS n FROM {t}", {})[0]["n"])
                for t in TABLES}


def create(http: httpx.Client, **body: Any) -> dict[str, Any]:
    r = http.post("/api/v1/webhooks", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def path_of(endpoint: dict[str, Any]) -> str:
    assert endpoint["url"].endswith("/hooks/" + endpoint["id"])
    return "/hooks/" + endpoint["id"]


def stripe_body(event_id: str = "evt_1", kind: str = "invoice.paid") -> bytes:
    return json.dumps({"id": event_id, "type": kind,
                       "data": {"object": {"id": "in_7", "amount_paid": 900}}}).encode()


def stripe_headers(body: bytes, secret: str, ts: float) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret,
                                                               int(ts))
    return {"Stripe-Signature": header, "Content-Type": "application/json"}


def github_headers(body: bytes, secret: str, delivery: str = "d-1") -> dict[str, str]:
    mac = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={mac}", "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery, "Content-Type": "application/json"}


def standard_headers(body: bytes, secret: str, msg_id: str, ts: float) -> dict[str, str]:
    when = dt.datetime.fromtimestamp(int(ts), dt.UTC)
    signature = standardwebhooks.Webhook(secret).sign(msg_id, when, body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(ts)),
            "webhook-signature": signature, "Content-Type": "application/json"}


async def test_stripe_signed_by_stripes_library_publishes_and_runs_the_subscriber(
    store: Store, http: httpx.Client, clock: FakeClock
) -> None:
    endpoint = create(http, name="stripe", scheme="stripe", secret=STRIPE_SECRET,
                      event="stripe.{type}")
    assert endpoint["id"].startswith("wh_") and len(endpoint["id"]) >= 3 + 32
    body = stripe_body()
    r = http.post(path_of(endpoint), content=body,
                  headers=stripe_headers(body, STRIPE_SECRET, clock.now()))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["event_id"] == "webhook:stripe:evt_1" and not answer["duplicate"]
    assert len(answer["run_ids"]) == 1
    [event] = store.list_events("dev")
    assert event.name == "stripe.invoice.paid" and event.data == json.loads(body)
    [delivery] = store.webhook_deliveries("dev", endpoint["id"])
    assert delivery.delivery_id == "evt_1" and delivery.event_id == event.id

    worker = Worker(store, tasks={invoice_paid.id: invoice_paid}, env="dev")
    await worker.run_until_idle()
    await worker.shutdown()
    run = Client(store=store, env="dev").retrieve(answer["run_ids"][0])
    assert run.output == "paid in_7"


async def test_github_hmac_publishes_with_the_event_header_and_runs_the_subscriber(
    store: Store, http: httpx.Client
) -> None:
    endpoint = create(http, name="gh", scheme="github", secret=GITHUB_SECRET,
                      event="github.{event}")
    body = json.dumps({"ref": "refs/heads/main", "commits": []}).encode()
    r = http.post(path_of(endpoint), content=body, headers=github_headers(body, GITHUB_SECRET))
    assert r.status_code == 200, r.text
    assert r.json()["event_id"] == "webhook:gh:d-1"
    [event] = store.list_events("dev")
    assert event.name == "github.push"
    worker = Worker(store, tasks={github_push.id: github_push}, env="dev")
    await worker.run_until_idle()
    await worker.shutdown()
    run = Client(store=store, env="dev").retrieve(r.json()["run_ids"][0])
    assert run.output == "refs/heads/main"


def test_standard_webhooks_signed_by_the_reference_library(
    store: Store, http: httpx.Client, clock: FakeClock
) -> None:
    endpoint = create(http, name="svix", scheme="standard", secret=STANDARD_SECRET,
                      event="app.{type}", tolerance=60)
    body = json.dumps({"type": "user.created", "data": {"id": 3}}).encode()
    headers = standard_headers(body, STANDARD_SECRET, "msg_1", clock.now())
    # Several signatures, space separated (a rotation at the sender): one valid is enough.
    headers["webhook-signature"] = "v1,AAAA " + headers["webhook-signature"]
    r = http.post(path_of(endpoint), content=body, headers=headers)
    assert r.status_code == 200, r.text
    [event] = store.list_events("dev")
    assert event.name == "app.user.created" and event.id == "webhook:svix:msg_1"
    # Svix's own header names are accepted too; the timestamp within 60 s.
    clock.advance(30)
    body2 = json.dumps({"type": "user.deleted"}).encode()
    signed = standard_headers(body2, STANDARD_SECRET, "msg_2", clock.now())
    svix = {k.replace("webhook-", "svix-"): v for k, v in signed.items()}
    assert http.post(path_of(endpoint), content=body2, headers=svix).status_code == 200
    assert {e.name for e in store.list_events("dev")} == {"app.user.created",
                                                          "app.user.deleted"}


def test_plain_hmac_with_a_configured_header_in_base64(
    store: Store, http: httpx.Client
) -> None:
    endpoint = create(http, name="shop", scheme="hmac-sha256", secret=HMAC_SECRET,
                      event="shop.order", header="X-Shop-Hmac", encoding="base64",
                      prefix="sha256=", id_header="X-Shop-Delivery")
    body = b'{"order": 12}'
    mac = base64.b64encode(hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).digest())
    headers = {"X-Shop-Hmac": "sha256=" + mac.decode(), "X-Shop-Delivery": "o-12"}
    r = http.post(path_of(endpoint), content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["event_id"] == "webhook:shop:o-12"
    hexed = {"X-Shop-Hmac": "sha256=" + hmac.new(HMAC_SECRET.encode(), body,
                                                 hashlib.sha256).hexdigest(),
             "X-Shop-Delivery": "o-13"}
    assert http.post(path_of(endpoint), content=body, headers=hexed).status_code == 401


REFUSALS = ["tampered body", "wrong secret", "stale timestamp", "missing header",
            "future timestamp"]


def test_a_refused_request_is_401_and_stores_nothing(
    store: Store, http: httpx.Client, clock: FakeClock
) -> None:
    endpoints = (create(http, name="stripe", scheme="stripe", secret=STRIPE_SECRET),
                 create(http, name="std", scheme="standard", secret=STANDARD_SECRET),
                 create(http, name="gh", scheme="github", secret=GITHUB_SECRET))
    before = counts(store)
    sent = 0
    for case in REFUSALS:
        sent += _refuse(http, endpoints, clock.now(), case)
        assert counts(store) == before, case  # not an event, a run, nor a delivery record
    assert sum(_webhooks.refusals.values()) == sent
    # ... and in Prometheus, by scheme (the reason's text would be an unbounded label).
    _metrics.disable()
    registry = _metrics.enable()
    try:
        body = stripe_body()
        for _ in range(2):
            http.post(path_of(endpoints[0]), content=body,
                      headers=stripe_headers(body, "whsec_wrong-secret", clock.now()))
        text = _metrics.exposition(registry)[0].decode()
        assert 'outlast_webhooks_refused_total{scheme="stripe"} 2.0' in text
    finally:
        _metrics.disable()
    # The same requests, signed right, are accepted: the refusals were the signatures'.
    body = stripe_body()
    good = http.post(path_of(endpoints[0]), content=body,
                     headers=stripe_headers(body, STRIPE_SECRET, clock.now()))
    assert good.status_code == 200 and counts(store)["webhook_deliveries"] == 1


def _refuse(http: httpx.Client, endpoints: tuple[dict[str, Any], ...], now: float,
            case: str) -> int:
    stripe_ep, std_ep, gh_ep = endpoints
    body = stripe_body()
    requests: list[tuple[dict[str, Any], bytes, dict[str, str]]] = []
    if case == "tampered body":
        tampered = body.replace(b"900", b"1")
        requests += [
            (stripe_ep, tampered, stripe_headers(body, STRIPE_SECRET, now)),
            (std_ep, tampered, standard_headers(body, STANDARD_SECRET, "m", now)),
            (gh_ep, tampered, github_headers(body, GITHUB_SECRET)),
        ]
    elif case == "wrong secret":
        other = "whsec_" + base64.b64encode(b"x" * 32).decode()
        requests += [
            (stripe_ep, body, stripe_headers(body, other, now)),
            (std_ep, body, standard_headers(body, other, "m", now)),
            (gh_ep, body, github_headers(body, "not-the-secret")),
        ]
    elif case in ("stale timestamp", "future timestamp"):
        then = now - 301 if case == "stale timestamp" else now + 301
        requests += [
            (stripe_ep, body, stripe_headers(body, STRIPE_SECRET, then)),
            (std_ep, body, standard_headers(body, STANDARD_SECRET, "m", then)),
        ]
    else:
        requests += [
            (stripe_ep, body, {"Content-Type": "application/json"}),
            (std_ep, body, {k: v for k, v in standard_headers(
                body, STANDARD_SECRET, "m", now).items() if k != "webhook-signature"}),
            (gh_ep, body, {k: v for k, v in github_headers(body, GITHUB_SECRET).items()
                           if k != "X-Hub-Signature-256"}),
        ]
    for endpoint, content, headers in requests:
        r = http.post(path_of(endpoint), content=content, headers=headers)
        assert r.status_code == 401, (case, endpoint["scheme"], r.text)
        assert r.json()["code"] == "invalid_signature"
    return len(requests)


def test_a_redelivery_deduplicates_through_the_event_log(
    store: Store, http: httpx.Client, clock: FakeClock
) -> None:
    endpoint = create(http, name="stripe", scheme="stripe", secret=STRIPE_SECRET)
    body = stripe_body("evt_same")
    first = http.post(path_of(endpoint), content=body,
                      headers=stripe_headers(body, STRIPE_SECRET, clock.now()))
    clock.advance(60)  # Stripe signs a retry afresh, with a new timestamp
    again = http.post(path_of(endpoint), content=body,
                      headers=stripe_headers(body, STRIPE_SECRET, clock.now()))
    assert first.status_code == again.status_code == 200
    assert again.json()["duplicate"] and again.json()["run_ids"] == first.json()["run_ids"]
    assert len(store.list_events("dev")) == 1
    assert counts(store)["runs"] == 1
    recorded = store.webhook_deliveries("dev", endpoint["id"])
    assert [d.duplicate for d in recorded] == [True, False]  # newest first


def test_rotation_accepts_the_old_secret_until_the_overlap_ends(
    store: Store, http: httpx.Client, clock: FakeClock
) -> None:
    endpoint = create(http, name="gh", scheme="github", secret=GITHUB_SECRET)
    new_secret = "gh-rotated-secret-99"
    r = http.post("/api/v1/webhooks/gh/rotate", json={"secret": new_secret, "overlap": "24h"})
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["previous_fingerprint"] == endpoint["fingerprint"]
    assert rotated["fingerprint"] != endpoint["fingerprint"]
    body = b'{"ref": "refs/heads/main"}'

    def send(secret: str, delivery: str) -> int:
        return http.post(path_of(endpoint), content=body,
                         headers=github_headers(body, secret, delivery)).status_code

    assert send(GITHUB_SECRET, "a") == 200  # the old one, within the overlap
    assert send(new_secret, "b") == 200
    clock.advance(24 * 3600 - 1)
    assert send(GITHUB_SECRET, "c") == 200
    clock.advance(2)
    before = counts(store)
    assert send(GITHUB_SECRET, "d") == 401  # the overlap ended
    assert counts(store) == before
    assert send(new_secret, "e") == 200
    shown = http.get("/api/v1/webhooks/gh").json()
    assert shown["previous_fingerprint"] is None
    assert [d["delivery_id"] for d in shown["deliveries"]] == ["e", "c", "b", "a"]


def test_secrets_never_leave_in_logs_or_answers(
    store: Store, http: httpx.Client, clock: FakeClock, db_url: str,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    texts = [http.post("/api/v1/webhooks", json={
        "name": f"n{i}", "scheme": s, "secret": secret}).text
        for i, (s, secret) in enumerate(zip(("stripe", "github", "standard", "hmac-sha256"),
                                            SECRETS, strict=True))]
    texts.append(http.get("/api/v1/webhooks").text)
    texts.append(http.get("/api/v1/webhooks/n0").text)
    texts.append(http.post("/api/v1/webhooks/n1/rotate",
                           json={"secret": "another-secret-1", "overlap": 60}).text)
    body = stripe_body()
    good = stripe_headers(body, STRIPE_SECRET, clock.now())
    ep = store.get_webhook("dev", "n0")
    assert ep is not None
    texts.append(http.post(f"/hooks/{ep.id}", content=body, headers=good).text)
    texts.append(http.post(f"/hooks/{ep.id}", content=body + b" ", headers=good).text)
    env = {"OUTLAST_DATABASE_URL": db_url}
    os.environ.update(env)
    try:
        for argv in (["webhooks", "list"], ["webhooks", "show", "n0"],
                     ["webhooks", "list", "--json"], ["webhooks", "show", "n0", "--json"],
                     ["webhooks", "create", "cli", "--scheme", "github",
                      "--secret", "cli-secret-123", "--event", "gh.{event}"],
                     ["webhooks", "rotate", "cli", "--secret", "cli-secret-456",
                      "--overlap", "1h"]):
            assert main([*argv, "--database-url", db_url]) == 0
    finally:
        os.environ.pop("OUTLAST_DATABASE_URL", None)
    out = capsys.readouterr()
    texts += [out.out, out.err, caplog.text]
    everything = "\n".join(texts)
    assert "/hooks/wh_" in everything and "refused" in caplog.text
    for secret in (*SECRETS, "another-secret-1", "cli-secret-123", "cli-secret-456"):
        assert secret not in everything
        assert secret.removeprefix("whsec_") not in everything
    # Sealed at rest: the database holds no plaintext secret either.
    raw: Any = store
    with raw._transaction() as tx:
        stored = json.dumps(raw._raw(tx, "SELECT * FROM webhook_endpoints", {}), default=str)
    for secret in (*SECRETS, "cli-secret-123"):
        assert secret not in stored


def test_no_encryption_key_means_no_webhook(
    store: Store, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OUTLAST_ENCRYPTION_KEY")
    r = http.post("/api/v1/webhooks", json={"name": "x", "scheme": "github",
                                            "secret": GITHUB_SECRET})
    assert r.status_code == 500 and r.json()["code"] == "encryption_key_missing"
    assert "OUTLAST_ENCRYPTION_KEY" in r.json()["error"]
    assert store.list_webhooks("dev") == []


def test_edges_unknown_endpoint_large_body_bad_input_and_environments(
    store: Store, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = create(http, name="gh", scheme="github", secret=GITHUB_SECRET)
    assert http.post("/hooks/wh_nope", content=b"{}").status_code == 404
    monkeypatch.setenv("OUTLAST_MAX_PAYLOAD_BYTES", "1000")
    big = b'{"x": "' + b"a" * 2000 + b'"}'
    r = http.post(path_of(endpoint), content=big, headers=github_headers(big, GITHUB_SECRET))
    assert r.status_code == 413
    for bad, field in (({"name": "gh"}, "name"),  # taken
                       ({"event": "stripe.{type}"}, "event"),  # not a github field
                       ({"tolerance": 5}, "tolerance"),  # not a github option
                       ({"secret": "short"}, "secret")):
        body = {"name": "other", "scheme": "github", "secret": GITHUB_SECRET, **bad}
        r = http.post("/api/v1/webhooks", json=body)
        assert r.status_code == 422, (bad, r.text)
        assert field in r.text
    # A signed body the scheme cannot read: 400, nothing stored.
    before = counts(store)
    r = http.post(path_of(endpoint), content=b"not json",
                  headers=github_headers(b"not json", GITHUB_SECRET))
    assert r.status_code == 400 and counts(store) == before
    # Another environment's key sees nothing of dev's endpoints.
    prod = create_key(store, "prod").secret
    other = {"Authorization": f"Bearer {prod}"}
    assert http.get("/api/v1/webhooks", headers=other).json()["data"] == []
    assert http.get("/api/v1/webhooks/gh", headers=other).status_code == 404
    assert http.delete("/api/v1/webhooks/gh", headers=other).status_code == 404
    assert http.delete("/api/v1/webhooks/gh").status_code == 200
    assert http.post(path_of(endpoint), content=b"{}").status_code == 404


def test_dev_key_file_beside_the_sqlite_database(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OUTLAST_ENCRYPTION_KEY")
    url = f"sqlite:///{tmp_path}/db/outlast.db"
    with pytest.raises(_secret_box.EncryptionKeyMissing):
        _secret_box.box(url)
    made = _secret_box.ensure_dev_key(url)
    assert made == tmp_path / "db" / "encryption-key"
    assert made.stat().st_mode & 0o777 == 0o600
    box = _secret_box.box(url)
    assert box.open(box.seal("s3cret-value")) == "s3cret-value"
    assert _secret_box.ensure_dev_key(url) is None  # kept, not replaced
    # Two keys: the first seals, both open (rotating the key itself).
    old = _secret_box.SecretBox([made.read_text().strip()])
    sealed = old.seal("x-secret-1")
    both = _secret_box.SecretBox([_secret_box.new_key(), made.read_text().strip()])
    assert both.open(sealed) == "x-secret-1"


async def test_the_dashboard_webhooks_page_shows_endpoints_and_deliveries(
    store: Store, http: httpx.Client
) -> None:
    import html

    from tests.test_dashboard import _app, _client

    endpoint = create(http, name="gh", scheme="github", secret=GITHUB_SECRET)
    create(http, name="quiet", scheme="stripe", secret=STRIPE_SECRET)
    body = b'{"ref": "refs/heads/main"}'
    sent = http.post(path_of(endpoint), content=body,
                     headers=github_headers(body, GITHUB_SECRET, "d-9")).json()
    http.post(path_of(endpoint), content=body, headers=github_headers(body, GITHUB_SECRET, "d-9"))
    dash = await _client(_app(store, require_login=False))
    try:
        r = await dash.get("/webhooks")
        assert r.status_code == 200
        page = html.unescape(r.text)
        assert endpoint["url"] in page and endpoint["fingerprint"] in page
        assert "github.{event}" in page and "quiet" in page
        assert "d-9" in page and "duplicate (a redelivery)" in page
        assert f'/runs/{sent["run_ids"][0]}"' in page
        assert "/events?name=github.push#event-webhook%3Agh%3Ad-9" in page
        assert GITHUB_SECRET not in page and STRIPE_SECRET not in page
        events = html.unescape((await dash.get("/events?name=github.push")).text)
        assert 'id="event-webhook%3Agh%3Ad-9"' in events
        only = html.unescape((await dash.get("/webhooks?webhook=quiet")).text)
        assert "d-9" not in only and "No deliveries yet" in only
    finally:
        await dash.http.aclose()


def test_the_event_and_its_delivery_record_commit_together(
    store: Store, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = create(http, name="gh", scheme="github", secret=GITHUB_SECRET)
    before = counts(store)
    raw: Any = store
    # The delivery record's INSERT fails after the event and its run were written: the
    # whole transaction rolls back, so the provider's retry finds nothing half done.
    original = raw.q["wh_insert_delivery"]
    monkeypatch.setitem(raw.q, "wh_insert_delivery", "INSERT INTO no_such_table VALUES (1)")
    body = b'{"ref": "refs/heads/main"}'
    with pytest.raises(Exception, match="no_such_table"):
        http.post(path_of(endpoint), content=body, headers=github_headers(body, GITHUB_SECRET))
    assert counts(store) == before
    monkeypatch.setitem(raw.q, "wh_insert_delivery", original)
    r = http.post(path_of(endpoint), content=body, headers=github_headers(body, GITHUB_SECRET))
    assert r.status_code == 200 and not r.json()["duplicate"]
    # What the publish did to its subscriber is in the event's row (events.fanout): no
    # event_deliveries row (those are retained deliveries and replays).
    assert counts(store) == {**before, "events": 1, "webhook_deliveries": 1, "runs": 1}
