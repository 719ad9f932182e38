"""Published task definitions, cached per process for the trigger endpoints.

A trigger of a task the server has no code for is validated against the definition its
workers published (its payload's JSON schema, its defaults). Reading it from the
database on every request cost a round trip, in a thread, per trigger; here it is read
once and trusted for ``OUTLAST_TASK_CACHE_SECONDS`` (1 s by default), so a deploy that
publishes a new definition (a new schema, new defaults, a new version's) shows on every
server within that time. The compiled schema goes with the definition: ``_trigger``'s
validators are kept by schema object, and a cached definition keeps its object until it
is read again. A task that is not published is never cached: the first trigger after a
worker publishes it finds it.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .._config import settings
from .._trigger import REGISTRY
from ..store.base import TaskDef, TaskDefs

_CACHES: weakref.WeakKeyDictionary[Any, TaskCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


class TaskCache:
    def __init__(self, store: TaskDefs, ttl: float | None = None) -> None:
        self.store = store
        self.ttl = settings().task_cache_seconds if ttl is None else ttl
        self._entries: dict[tuple[str, str], tuple[float, TaskDef]] = {}

    @classmethod
    def of(cls, store: TaskDefs) -> TaskCache:
        with _CACHES_LOCK:
            cache = _CACHES.get(store)
            if cache is None:
                cache = _CACHES[store] = cls(store)
            return cache

    def fresh(self, env: str, task_id: str) -> TaskDef | None:
        """The cached definition if it is younger than the TTL, else None."""
        hit = self._entries.get((env, task_id))
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        return None

    async def lookup(self, env: str, task_id: str) -> TaskDef | None:
        """The definition (from the cache, or read in a thread); None if unpublished or
        if the task's code is imported here."""
        if task_id in REGISTRY:
            return None
        hit = self.fresh(env, task_id)
        if hit is not None:
            return hit
        return self._keep(env, task_id,
                          await asyncio.to_thread(self.store.get_task, env, task_id))

    def lookup_blocking(self, env: str, task_id: str) -> TaskDef | None:
        if task_id in REGISTRY:  # its code is imported here: no definition needed
            return None
        hit = self.fresh(env, task_id)
        if hit is not None:
            return hit
        return self._keep(env, task_id, self.store.get_task(env, task_id))

    def memo(self, env: str) -> Callable[[str], TaskDef | None]:
        """``lookup_blocking`` for the items of one batch: a task read once per batch,
        even one that is not published (the batch then fails on its first item)."""
        seen: dict[str, TaskDef | None] = {}

        def lookup(task_id: str) -> TaskDef | None:
            if task_id not in seen:
                seen[task_id] = self.lookup_blocking(env, task_id)
            return seen[task_id]

        return lookup

    def _keep(self, env: str, task_id: str, found: TaskDef | None) -> TaskDef | None:
        if found is not None and self.ttl > 0:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[(env, task_id)] = (time.monotonic(), found)
        return found
