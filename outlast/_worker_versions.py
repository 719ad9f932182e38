"""The worker's version (C11): what it may claim, and a draining worker's end.

A worker of version V claims runs locked to V, and unlocked runs of the tasks for which
V is the current version (``_versions.current_for``), which lock to V as they are taken.
Which tasks those are is read from the store every beat interval, so a ``promote`` or a
newer version's first worker moves new runs within about a second. A draining worker
(``outlast worker --drain``) claims no unlocked run and stops by itself once no
unfinished run is locked to its version: waiting ones included, it waits for their
resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from . import _versions
from ._worker_base import WorkerBase
from .store._versions_base import VersionScope

log = logging.getLogger("outlast.worker")


class Versioning(WorkerBase):
    version: str
    draining: bool
    _scope: VersionScope
    _drained: asyncio.Event | None

    def _init_versions(self, version: str | None, drain: bool) -> None:
        """The task code version served: given, or a digest of the app's source."""
        self.version = (
            _versions.check_version(version) if version
            else _versions.default_version(self.tasks.values())
        )
        self.draining = drain
        self._scope = VersionScope(self.version, ())
        self._drained = None

    def claim_scope(self) -> VersionScope | None:
        return self._scope

    def _refresh_scope(self) -> bool:
        """Read which tasks this version is current for; for a draining worker, whether
        any unfinished run is still locked to its version (True when none is). In a
        thread."""
        if self.draining:
            self._scope = VersionScope(self.version, ())
            left = self.store.locked_runs(self.env, self.version).get(self.version, {})
            return not left
        live = self.store.version_workers(self.env)
        registered = self.store.registered_versions(self.env)
        pinned = self.store.pinned_version(self.env)
        new = [
            t for t in sorted(self.tasks)
            if _versions.current_for(t, live, registered, pinned) == self.version
        ]
        if list(self._scope.new_task_ids) != new:
            log.info(
                "worker %s (version %s) takes new runs of %d of its %d tasks",
                self.id, self.version, len(new), len(self.tasks),
                extra={"worker_id": self.id},
            )
            self._scope = VersionScope(self.version, tuple(new))
        return False

    async def refresh_versions(self) -> None:
        """Refresh the claim scope now; a drained worker sets its ``drained`` event once
        nothing of its own is left here either."""
        done = await asyncio.to_thread(self._refresh_scope)
        if done and not self.active and not self._ready and self._drained is not None:
            if not self._drained.is_set():
                log.info(
                    "worker %s: no unfinished run is locked to version %s; drained",
                    self.id, self.version, extra={"worker_id": self.id},
                )
            self._drained.set()

    async def _versions_loop(self, interval: float) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.refresh_versions()
            await asyncio.sleep(interval)
