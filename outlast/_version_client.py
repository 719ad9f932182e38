"""Versions in ``Client`` and ``AsyncClient`` (C11): list them, promote one, migrate runs,
over the database (``_versions``) or over HTTP (``server/versions_api.py``). Thin on
purpose: the rows are the JSON of ``_versions.version_json`` either way."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from . import _versions
from .store.base import Store

if TYPE_CHECKING:
    from ._http import HttpTransport


class VersionMethods:
    env: str
    _http: HttpTransport | None

    def _ready(self) -> Store:
        raise NotImplementedError

    def list_versions(self) -> list[dict[str, Any]]:
        """The environment's versions, newest first: live workers, unfinished runs locked
        to each (per status), whether it is current, pinned, retirable."""
        if self._http is not None:
            data: list[dict[str, Any]] = self._http.request("GET", "/api/v1/versions")["data"]
            return data
        return [_versions.version_json(v) for v in _versions.version_table(self._ready(), self.env)]

    def promote_version(self, version: str) -> dict[str, Any]:
        """Pin ``version`` as current: new runs go to it (a rollback)."""
        if self._http is not None:
            out: dict[str, Any] = self._http.request(
                "POST", f"/api/v1/versions/{quote(version, safe='')}/promote"
            )
            return out
        _versions.promote(self._ready(), self.env, version)
        return {"version": version, "current": True, "pinned": True}

    def migrate_runs(
        self, from_version: str, to_version: str, task_id: str | None = None
    ) -> int:
        """Re-lock the unfinished runs of ``from_version`` (of ``task_id``) to
        ``to_version``; how many. A journal the new code cannot replay fails (C8)."""
        if self._http is not None:
            body = {"from": from_version, "to": to_version, "task": task_id}
            out = self._http.request("POST", "/api/v1/versions/migrate", json=body)
            return int(out["migrated"])
        return _versions.migrate(self._ready(), self.env, from_version, to_version, task_id)


class AsyncVersionMethods:
    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

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
