"""The store's role interfaces: every method is declared in exactly one role, both backends
implement every role, the backend is an attribute, and the dashboard needs nothing
beyond the interface (a store with no other attributes serves every page in full)."""

from __future__ import annotations

import abc
import ast
import html
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import outlast.store
from outlast.client import Client
from outlast.server import create_app
from outlast.server.dashboard import mount
from outlast.store import open_store
from outlast.store.base import ROLES, Store
from outlast.store.postgres import PostgresStore
from outlast.store.sqlite import SQLiteStore
from tests.apps.dash_app import TASKS


def _declared(role: type) -> set[str]:
    """The abstract methods a role declares itself (not those of the roles it extends)."""
    return {
        name for name, value in vars(role).items() if getattr(value, "__isabstractmethod__", False)
    }


# Every interface Store unites: the roles of base.py and any a feature adds to its bases.
INTERFACES = [c for c in Store.__mro__[1:] if c not in (abc.ABC, object)]


def test_every_method_of_store_is_declared_in_exactly_one_role() -> None:
    assert set(ROLES) <= set(INTERFACES)
    seen: dict[str, type] = {}
    for role in INTERFACES:
        for name in _declared(role):
            assert name not in seen, f"{name} declared in {seen[name].__name__} and {role.__name__}"
            seen[name] = role
    assert _declared(Store) == set()  # Store only unites the roles
    assert set(seen) == set(Store.__abstractmethods__)


@pytest.mark.parametrize("impl", [SQLiteStore, PostgresStore])
@pytest.mark.parametrize("role", INTERFACES, ids=lambda r: r.__name__)
def test_both_backends_implement_every_role(impl: type[Store], role: type) -> None:
    assert issubclass(impl, role)
    assert not inspect.isabstract(impl), impl.__abstractmethods__
    for name in _declared(role):
        method = getattr(impl, name)
        assert not getattr(method, "__isabstractmethod__", False), f"{impl.__name__}.{name}"
        # Same parameters as declared: a caller holding the role can call the backend.
        declared = inspect.signature(getattr(role, name))
        assert list(inspect.signature(method).parameters) == list(declared.parameters), name


def test_the_backend_is_an_attribute(db_url: str, backend: str) -> None:
    store = open_store(db_url)
    try:
        assert store.backend == backend
    finally:
        store.close()


def _bare(inner: Store) -> Store:
    """A Store with the interface's methods and attributes only, each calling ``inner``:
    no ``_transaction``, ``_raw``, ``dialect`` or anything else a caller could reach."""

    def forward(name: str) -> Callable[..., Any]:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            return getattr(inner, name)(*args, **kwargs)

        call.__name__ = name
        return call

    names = set(Store.__abstractmethods__) | {"now", "refused_data", "wake_local"}
    namespace: dict[str, Any] = {name: forward(name) for name in names}
    namespace.update(url=inner.url, clock=inner.clock, backend=inner.backend)
    bare: Store = type("BareStore", (Store,), namespace)()
    return bare


async def test_the_dashboard_needs_nothing_beyond_the_interface(
    store: Store, client: Client
) -> None:
    assert "dash-held" in TASKS and "dash-child" in TASKS  # registered by the import
    bare = _bare(store)
    assert not hasattr(bare, "_transaction") and not hasattr(bare, "dialect")
    Client(store=store, env="prod").trigger("dash-child", 1)
    for key in ("acme", "acme", "globex"):
        client.trigger("dash-held", {}, concurrency_key=key)
    done = client.trigger("dash-child", 2)
    # The run ended 3 s after it started: the tasks page shows its percentiles.
    raw: Any = store
    with raw._transaction() as tx:
        raw._raw(
            tx,
            "UPDATE runs SET status = 'COMPLETED', started_at = created_at, "
            "finished_at = created_at + 3 WHERE id = :id",
            {"id": done.id},
        )
    child = client.trigger("dash-child", 3)
    with raw._transaction() as tx:
        params = {"p": done.id, "id": child.id}
        raw._raw(tx, "UPDATE runs SET parent_id = :p WHERE id = :id", params)

    app = create_app(bare, dashboard=False)
    mount(app, bare, require_login=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:

        async def page(path: str) -> str:
            r = await http.get(path)
            assert r.status_code == 200, (path, r.status_code)
            return html.unescape(r.text)

        runs = await page("/runs")
        assert '<option value="prod">' in runs  # known_envs
        assert '<option value="dash-held"' in runs  # queue_names
        assert child.id in await page(f"/runs/{done.id}")  # child_runs
        tasks = await page("/tasks")
        assert "3 s" in tasks or "3.0 s" in tasks  # duration_percentiles
        queues = await page("/queues")
        assert "acme" in queues and "globex" in queues  # queued_by_key
        for path in ("/workers", "/waitpoints", "/schedules"):
            await page(path)


# The modules below the store, which it may import: pure data and utilities.
BELOW_THE_STORE = {"outlast.runs", "outlast._serde", "outlast._errors", "outlast._clock",
                   "outlast._ids"}


def test_the_store_imports_nothing_above_it() -> None:
    """At module top level or inside functions alike."""
    root = Path(outlast.store.__file__).parent
    above: list[str] = []
    for path in sorted(root.glob("*.py")):
        package = "outlast.store"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    module = f"{base}.{node.module}" if node.module else base
                    names = [module] if node.module else [f"{base}.{a.name}" for a in node.names]
                else:
                    names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                inside = name == "outlast.store" or name.startswith("outlast.store.")
                if name.startswith("outlast") and not inside and name not in BELOW_THE_STORE:
                    above.append(f"{path.name}: {name}")
    assert above == []
