"""A task for tests/test_migrations.py, served by a real `outlast worker` process.

The migration test points that process at a database whose schema it does not know; it
must refuse to start. If it started anyway it would serve this task until killed, and
the test's timeout would say so.
"""

from __future__ import annotations

from typing import Any

from outlast import task


@task(id="eng-app-noop")
async def noop(payload: dict[str, Any]) -> None:
    return None
