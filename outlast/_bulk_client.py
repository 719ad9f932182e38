"""Bulk actions in ``Client`` and ``AsyncClient``, on the client's transport: over the
database through ``_bulk`` (``StoreTransport``), or over HTTP to ``server/bulk_api.py``
(``HttpBulk`` here; the server runs batches for a bounded time per request, so the client
calls it again until the action is done, reporting progress each time)."""

from __future__ import annotations

import asyncio
import datetime as _dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from . import _bulk
from .store._bulk_base import BulkAction, BulkFilter

if TYPE_CHECKING:
    from ._transport import Transport

Time = float | str | _dt.datetime | None


def bulk_from_json(d: dict[str, Any]) -> BulkAction:
    return BulkAction(**{**d, "filter": BulkFilter.from_json(d.get("filter") or {})})


def _path(bulk_id: str, action: str = "") -> str:
    return f"/api/v1/bulk-actions/{quote(bulk_id, safe='')}{action}"


class HttpBulk:
    """The bulk calls of ``HttpTransport``, to ``server/bulk_api.py``."""

    def request(self, method: str, path: str, *, json: Any = None,
                params: dict[str, Any] | None = None, idempotent: bool = False) -> Any:
        raise NotImplementedError

    def bulk_count(self, action: str, f: BulkFilter) -> int:
        out = self.request("POST", "/api/v1/bulk-actions", json={
            "action": action, "filter": _wire_filter(f), "dry_run": True})
        return int(out["count"])

    def start_bulk(self, action: str, f: BulkFilter) -> BulkAction:
        return bulk_from_json(self.request("POST", "/api/v1/bulk-actions", json={
            "action": action, "filter": _wire_filter(f)}))

    def run_bulk(self, bulk_id: str, size: int,
                 on_progress: _bulk.Progress | None) -> BulkAction:
        # The server runs batches for a bounded time per request: call until done.
        while True:
            bulk = bulk_from_json(self.request(
                "POST", _path(bulk_id, "/run"), json={"batch_size": size}))
            if on_progress is not None:
                on_progress(bulk)
            if bulk.done:
                return bulk

    def get_bulk(self, bulk_id: str) -> BulkAction:
        return bulk_from_json(self.request("GET", _path(bulk_id)))

    def list_bulk(self, limit: int) -> list[BulkAction]:
        out = self.request("GET", "/api/v1/bulk-actions", params={"limit": limit})
        return [bulk_from_json(d) for d in out["data"]]

    def abort_bulk(self, bulk_id: str) -> BulkAction:
        return bulk_from_json(self.request("POST", _path(bulk_id, "/abort")))


class BulkMethods:
    """``Client``'s bulk calls, on its transport."""

    _transport: Transport

    def bulk_count(
        self, action: str, *, task: str | None = None, status: str | Sequence[str] | None = None,
        tag: str | None = None, queue: str | None = None, created_from: Time = None,
        created_to: Time = None, search: str | None = None, version: str | None = None,
    ) -> int:
        """The dry run: how many runs a bulk ``action`` with this filter would cover now."""
        f = _bulk.make_filter(action, task=task, status=status, tag=tag, queue=queue,
                              created_from=created_from, created_to=created_to,
                              search=search, version=version)
        return self._transport.bulk_count(action, f)

    def bulk_cancel(self, *, batch_size: int | None = None,
                    on_progress: _bulk.Progress | None = None, **filters: Any) -> BulkAction:
        """Cancel every run matching the filter (``task``, ``status``, ``tag``, ``queue``,
        ``created_from``, ``created_to``, ``version``) that has not ended, in batches;
        ``on_progress`` is called with the action after each batch."""
        return self.resume_bulk(self.start_bulk("cancel", **filters).id,
                                batch_size=batch_size, on_progress=on_progress)

    def bulk_replay(self, *, batch_size: int | None = None,
                    on_progress: _bulk.Progress | None = None, **filters: Any) -> BulkAction:
        """Replay every run matching the filter (each once, with its own payload)."""
        return self.resume_bulk(self.start_bulk("replay", **filters).id,
                                batch_size=batch_size, on_progress=on_progress)

    def start_bulk(self, action: str, **filters: Any) -> BulkAction:
        """Record a bulk action over the runs matching now, without acting yet; run it with
        ``resume_bulk``."""
        return self._transport.start_bulk(action, _bulk.make_filter(action, **filters))

    def resume_bulk(self, bulk_id: str, *, batch_size: int | None = None,
                    on_progress: _bulk.Progress | None = None) -> BulkAction:
        """Run a bulk action to the end, from its last committed batch (after a crash, or
        when started elsewhere). Runs already acted on are never acted on again."""
        return self._transport.run_bulk(bulk_id, _bulk.batch_size(batch_size), on_progress)

    def get_bulk(self, bulk_id: str) -> BulkAction:
        return self._transport.get_bulk(bulk_id)

    def list_bulk(self, limit: int = 20) -> list[BulkAction]:
        """Bulk actions, newest first."""
        return self._transport.list_bulk(limit)

    def abort_bulk(self, bulk_id: str) -> BulkAction:
        """Stop a running bulk action: the batches committed stay done, no more follow."""
        return self._transport.abort_bulk(bulk_id)


def _wire_filter(f: BulkFilter) -> dict[str, Any]:
    out = f.to_json()
    if "task_id" in out:
        out["task"] = out.pop("task_id")
    return out


class AsyncBulkMethods:
    """``AsyncClient``'s bulk calls: ``BulkMethods`` of its sync client in a thread
    (``on_progress`` is then called from that thread). A bulk action is a long loop of
    batches with a progress callback, an admin's call: it has no async transport."""

    sync: BulkMethods

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.sync, name), *args, **kwargs)

    async def bulk_count(self, action: str, **filters: Any) -> int:
        n: int = await self._call("bulk_count", action, **filters)
        return n

    async def bulk_cancel(self, **kw: Any) -> BulkAction:
        b: BulkAction = await self._call("bulk_cancel", **kw)
        return b

    async def bulk_replay(self, **kw: Any) -> BulkAction:
        b: BulkAction = await self._call("bulk_replay", **kw)
        return b

    async def start_bulk(self, action: str, **filters: Any) -> BulkAction:
        b: BulkAction = await self._call("start_bulk", action, **filters)
        return b

    async def resume_bulk(self, bulk_id: str, **kw: Any) -> BulkAction:
        b: BulkAction = await self._call("resume_bulk", bulk_id, **kw)
        return b

    async def get_bulk(self, bulk_id: str) -> BulkAction:
        b: BulkAction = await self._call("get_bulk", bulk_id)
        return b

    async def list_bulk(self, limit: int = 20) -> list[BulkAction]:
        bs: list[BulkAction] = await self._call("list_bulk", limit)
        return bs

    async def abort_bulk(self, bulk_id: str) -> BulkAction:
        b: BulkAction = await self._call("abort_bulk", bulk_id)
        return b
