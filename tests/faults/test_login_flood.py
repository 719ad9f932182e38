"""The dashboard's login under attack (issue 16, defect 8).

A flood of wrong passwords (about 90/s, unauthenticated) used to sleep half a second each
in the shared thread pool, and the API's median went from 1.7 ms to 500 ms. Now it is
answered 429 with Retry-After per client address, nothing sleeps, the API keeps its pace
and a login from another address goes through (a real `outlast server`, the flood's
address given by X-Forwarded-For, which uvicorn honours from 127.0.0.1). A session cookie
used to keep working after its logout (it cancelled a run); a logout now ends the login on
the server, for every server on the database, and so does a password change. Figures are
printed (run with ``-s``).
"""

from __future__ import annotations

import math
import re
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from outlast.client import Client
from outlast.runs import RunStatus
from outlast.server.dashboard._throttle import BURST, EVERY, MAX_ADDRESSES, LoginThrottle
from outlast.store.base import Store
from tests.faults.invariant import check_liveness
from tests.test_dashboard import _app, _client
from tests.test_server_e2e import Fleet

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
def fleet(db_url: str, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(db_url, tmp_path)
    f.env["OUTLAST_DASHBOARD_PASSWORD"] = "correct horse"
    try:
        yield f
    finally:
        f.stop()


def _login_form(http: httpx.Client, address: str) -> str:
    """A session cookie (kept in ``http``) and its CSRF token, as any visitor gets them."""
    page = http.get("/login", headers={"X-Forwarded-For": address})
    match = CSRF.search(page.text)
    assert match, page.text[:300]
    return match.group(1)


def _api_latencies(url: str, key: str, seconds: float) -> list[float]:
    out = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as api:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            assert api.get("/api/v1/runs?limit=1").status_code == 200
            out.append(time.perf_counter() - started)
            time.sleep(0.05)
    return out


def test_a_login_flood_is_refused_with_429_and_the_api_keeps_its_pace(fleet: Fleet) -> None:
    start = fleet.server()
    key = fleet.key()
    url = start()
    quiet = statistics.median(_api_latencies(url, key, 1.0))

    attacker = "203.0.113.9"
    statuses: list[int] = []
    retry_after: list[str | None] = []
    stop = threading.Event()

    def flood() -> None:
        # 120 clients, each trying a password every 1.33 s: about 90 attempts a second,
        # more than the thread pool's 40 threads got through at half a second each.
        with httpx.Client(base_url=url, timeout=60) as http:
            csrf = _login_form(http, attacker)
            while not stop.is_set():
                started = time.monotonic()
                r = http.post("/login", content=f"password=guess&csrf={csrf}",
                              headers={**FORM, "X-Forwarded-For": attacker})
                statuses.append(r.status_code)
                retry_after.append(r.headers.get("retry-after"))
                stop.wait(max(0.0, 1.33 - (time.monotonic() - started)))

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(120)]
    flood_started = time.monotonic()
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)  # the flood is at full rate
        during = _api_latencies(url, key, 4.0)
        # Someone else, from another address, still signs in.
        with httpx.Client(base_url=url, timeout=60) as user:
            csrf = _login_form(user, "198.51.100.2")
            ok = user.post("/login", content=f"password=correct+horse&csrf={csrf}",
                           headers={**FORM, "X-Forwarded-For": "198.51.100.2"})
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    flooded = time.monotonic() - flood_started
    p50 = statistics.median(during)
    refused = statuses.count(429)
    print(f"\nlogin flood: {len(statuses)} attempts, {statuses.count(401)} checked (401), "
          f"{refused} refused (429); API p50 {quiet * 1000:.1f} ms quiet, "
          f"{p50 * 1000:.1f} ms during the flood ({len(during)} calls)")
    # Generous for a loaded 2-core machine; the flood used to hold it at 0.5 to 1.5 s.
    assert p50 < 0.15, f"API p50 {p50 * 1000:.0f} ms during the login flood"
    assert ok.status_code == 303, ok.text[:300]
    # The burst, and what refilled while the flood lasted.
    assert statuses.count(401) <= BURST + math.ceil(flooded / EVERY) + 1
    assert refused > 0.8 * len(statuses)
    assert all(r and int(r) >= 1 for r, s in zip(retry_after, statuses, strict=True)
               if s == 429)
    check_liveness(fleet.db_url)


def test_the_throttle_refills_per_address_and_stays_bounded() -> None:
    now = [0.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    for _ in range(BURST):
        assert throttle.wait("a") == 0
        throttle.failed("a")
    assert throttle.wait("a") == EVERY  # over the limit: told how long to wait
    assert throttle.wait("b") == 0  # another address is not affected
    now[0] += EVERY
    assert throttle.wait("a") == 0
    throttle.failed("a")
    assert throttle.wait("a") > 0
    for i in range(MAX_ADDRESSES + 10):
        throttle.failed(f"x{i}")
    assert len(throttle._buckets) <= MAX_ADDRESSES


# -- logout and password change end the session on the server ------------------------------


async def test_a_cookie_kept_from_before_logout_no_longer_works(
    store: Store, client: Client, db_url: str
) -> None:
    run = client.trigger("dash-held", {})
    first, second = _app(store, password="pw"), _app(store, password="pw")  # two servers
    d = await _client(first)
    await d.get("/login")
    assert (await d.post("/login", {"password": "pw"}, env=None)).status_code == 303
    await d.get("/runs")
    stolen, stolen_csrf = d.http.cookies["outlast_dashboard"], d.csrf

    # Logged out on the other server: the login ends for both.
    other = await _client(second)
    other.http.cookies.set("outlast_dashboard", stolen)
    other.csrf = stolen_csrf
    assert (await other.post("/logout", {}, env=None)).status_code == 303

    replay = await _client(first)
    replay.http.cookies.set("outlast_dashboard", stolen)
    replay.csrf = stolen_csrf
    resp = await replay.post(f"/runs/{run.id}/cancel", {})
    assert resp.status_code == 303 and resp.headers["location"].startswith("/login")
    assert (await replay.get("/runs")).status_code == 303
    assert (await replay.get("/dashboard-api/runs")).status_code == 401
    assert client.retrieve(run.id).status == RunStatus.QUEUED

    # A password change signs out a login made under the old password.
    await d.get("/login")
    assert (await d.post("/login", {"password": "pw"}, env=None)).status_code == 303
    changed = await _client(_app(store, password="new pw"))
    changed.http.cookies.set("outlast_dashboard", d.http.cookies["outlast_dashboard"])
    assert (await changed.get("/runs")).status_code == 303
    for c in (d, other, replay, changed):
        await c.http.aclose()
    check_liveness(db_url)
