"""Property-based tests of the HTTP API from its own OpenAPI document (schemathesis).

For every operation in /api/v1/openapi.json, schemathesis (4.x, its pytest integration)
generates requests, valid and invalid, sends them to the ASGI app with a valid secret key,
and checks that no response is a 5xx, that each status code is documented, that each body
matches its documented schema (errors included: one shape, ``{"error", "code", "field"}``),
that a route declaring the bearer key refuses requests without it, and that a method a
path does not serve is a 405 naming the ones it does. Both backends: PostgreSQL refuses
things SQLite takes (a NUL character in a name). MAX_EXAMPLES per operation, derandomized,
keeps the run short and repeatable; the "coverage" phase, which multiplies the cases, is
off.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from starlette.types import Receive, Scope, Send

from outlast._secret_box import new_key
from outlast.server import create_app
from outlast.server.auth import create_key
from outlast.store import open_store
from outlast.store.base import Store, TaskDef

from .conftest import _pg_url, drop_pg_database, new_pg_database

MAX_EXAMPLES = 15


class _Proxy:
    """The app schemathesis calls. The schema is loaded once, at import (schemathesis
    builds its tests from it), while the store behind the app changes per backend."""

    target: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.target(scope, receive, send)


_proxy = _Proxy()
# The OpenAPI document does not depend on the data: any store serves it.
with tempfile.TemporaryDirectory() as _tmp:
    _doc_store = open_store(f"sqlite:///{_tmp}/doc.db")
    _proxy.target = create_app(_doc_store)
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", _proxy)
    schema.config.phases.update(phases=["examples", "fuzzing"])
    # Triggers name the seeded task, so generated payloads and options go all the way to
    # validation and the database instead of stopping at an unknown task (a 404).
    schema.config.update(parameters={"task_id": "srv-fuzz"})
    _doc_store.close()

_KEY: dict[str, str] = {}


def _seed(store: Store) -> str:
    """A key, and a published task that takes any payload, so that generated triggers of
    ``srv-fuzz`` reach the database (tags, keys, queues, delays as generated) rather than
    stopping at an unknown task or a payload check."""
    store.publish_tasks("dev", [TaskDef(
        id="srv-fuzz", queue="task/srv-fuzz", payload_schema={}, spec={},
    )])
    app = create_app(store)
    _proxy.target = app
    return create_key(store, "dev").secret


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[str]:
    name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz')}/outlast.db"
    else:
        name = new_pg_database()
        url = _pg_url(name)
    store = open_store(url)
    store.migrate()
    # Incoming webhooks and alert rules seal their secrets: without a key, creating one is a
    # 500 on purpose.
    had = os.environ.get("OUTLAST_ENCRYPTION_KEY")
    os.environ["OUTLAST_ENCRYPTION_KEY"] = new_key()
    try:
        _KEY["secret"] = _seed(store)
        yield request.param
    finally:
        if had is None:
            os.environ.pop("OUTLAST_ENCRYPTION_KEY", None)
        else:
            os.environ["OUTLAST_ENCRYPTION_KEY"] = had
        store.close()
        if name is not None:
            drop_pg_database(name)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
)
def test_api_conforms_to_its_openapi_document(case: Any, served: str) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {_KEY['secret']}"},
        checks=[
            checks.not_a_server_error,
            checks.status_code_conformance,
            checks.content_type_conformance,
            checks.response_schema_conformance,
            checks.response_headers_conformance,
            checks.ignored_auth,
            checks.unsupported_method,
        ],
    )


def test_openapi_document_is_served() -> None:
    doc = schema.raw_schema
    assert doc["info"]["title"] == "outlast"
    paths = set(doc["paths"])
    for path in ("/api/v1/tasks/{task_id}/trigger", "/api/v1/runs", "/api/v1/runs/{run_id}",
                 "/api/v1/runs/{run_id}/events", "/api/v1/waitpoints/tokens",
                 "/api/v1/queues", "/api/v1/health", "/api/v1/ready"):
        assert path in paths
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    # Errors are documented in the one shape, not FastAPI's default {"detail": …}.
    trigger = doc["paths"]["/api/v1/tasks/{task_id}/trigger"]["post"]["responses"]
    assert {"401", "404", "413", "422"} <= set(trigger)
    assert trigger["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorBody")
