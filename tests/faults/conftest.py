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
