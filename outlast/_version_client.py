"""Versions in ``Client`` and ``AsyncClient`` (C11): list them, promote one, migrate runs,
over the database (``_versions``) or over HTTP (``server/versions_api.py``). Thin on
purpose: the rows are the JSON of ``_versions.version_json`` either way."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from . import _versions
from ._http import HttpTransport

if TYPE_CHECKING:
    from ._transport import Transport


class VersionMethods:
    """``Client``'s version calls. Admin calls, like bulk's: over HTTP they are plain
    requests to ``server/versions_api.py``, over the database ``_versions`` on the store."""

    env: str
    _transport: Transport

    @property
    def _version_http(self) -> HttpTransport | None:
        return self._transport if isinstance(self._transport, HttpTransport) else None

    def _version_store(self) -> _versions.VersionStore:
        self._transport.check()
        return self._transport.store

    def list_versions(self) -> list[dict[str, Any]]:
        """The environment's versions, newest first: live workers, unfinished runs locked
        to each (per status), whether it is current, pinned, retirable."""
        if (http := self._version_http) is not None:
            data: list[dict[str, Any]] = http.request("GET", "/api/v1/versions")["data"]
            return data
        rows = _versions.version_table(self._version_store(), self.env)
        return [_versions.version_json(v) for v in rows]

    def promote_version(self, version: str) -> dict[str, Any]:
        """Pin ``version`` as current: new runs go to it (a rollback)."""
        if (http := self._version_http) is not None:
            out: dict[str, Any] = http.request(
                "POST", f"/api/v1/versions/{quote(version, safe='')}/promote"
            )
            return out
        _versions.promote(self._version_store(), self.env, version)
        return {"version": version, "current": True, "pinned": True}

    def migrate_runs(
        self, from_version: str, to_version: str, task_id: str | None = None
    ) -> int:
        """Re-lock the unfinished runs of ``from_version`` (of ``task_id``) to
        ``to_version``; how many. A journal the new code cannot replay fails (C8)."""
        if (http := self._version_http) is not None:
            body = {"from": from_version, "to": to_version, "task": task_id}
            out = http.request("POST", "/api/v1/versions/migrate", json=body)
            return int(out["migrated"])
        return _versions.migrate(self._version_store(), self.env, from_version, to_version, task_id)


class AsyncVersionMethods:
    """``AsyncClient``'s version calls: ``VersionMethods`` of its sync client in a thread."""

    sync: VersionMethods

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.sync, name), *args, **kwargs)

    async def list_versions(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = await self._call("list_versions")
        return out

    async def promote_version(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = await self._call("promote_version", version)
        return out

    async def migrate_runs(
        self, from_version: str, to_version: str, task_id: str | None = None
    ) -> int:
        return int(await self._call("migrate_runs", from_version, to_version, task_id))
