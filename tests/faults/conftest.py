"""Fixtures of the fault suite: a private PostgreSQL cluster (started once per session, on
first use) and worker fleets serving tests.apps.fault_app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import FaultFleet, PrivatePostgres


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def fault_fleet(db_url: str, tmp_path: Path) -> Iterator[FaultFleet]:
    """Workers on the test's fresh database of the current backend."""
    f = FaultFleet(db_url, tmp_path)
    try:
        yield f
    finally:
        f.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak runs only when asked for (``-m soak``), as pyproject.toml's marker says."""
    if "soak" in (config.getoption("markexpr") or ""):
        return
    here = Path(__file__).parent
    keep = [
        i for i in items if i.get_closest_marker("soak") is None or here not in i.path.parents
    ]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep
