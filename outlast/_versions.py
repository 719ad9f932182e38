"""Task code versions (C11): a worker's default version, which version is current, and
the table ``outlast versions list``, the HTTP API and the dashboard show.

A worker serves one version: ``--version``/``OUTLAST_VERSION``, or by default a digest of
the source of the modules that define the tasks this process imported (its app), so the
same code gives the same version on every machine and an edit gives a new one (``outlast
dev`` makes one per reload). The current version of an environment, for a task, is the
one an operator pinned (``promote``), else the newest registered among the live serving
workers of that task. Unlocked runs go only to workers current for their task; locked
ones only to workers of their version (the claim statements, ``_sql_claims``).
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from ._errors import ValidationError
from .store._versions_base import LiveWorker, VersionInfo, VersionStore

__all__ = ["VersionStore", "check_version", "current_for", "current_version", "default_version",
           "migrate", "promote", "version_json", "version_table"]

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,99}$")


def check_version(value: str, field: str = "version") -> str:
    """A version as given by a person: 1-100 characters, letters, digits and ``._:+-``."""
    if not isinstance(value, str) or not _VERSION.match(value):
        raise ValidationError(
            f"{field} must be 1-100 characters of letters, digits and . _ : + - "
            f"(starting with a letter or digit), not {value!r}",
            field=field,
        )
    return value


def default_version(tasks: Iterable[Any]) -> str:
    """A digest of the source of the modules defining ``tasks`` (and every task this
    process imported): the same code, the same version, on any machine."""
    from ._trigger import REGISTRY

    modules = sorted({_module_of(t) for t in [*tasks, *REGISTRY.values()]})
    h = hashlib.sha256()
    for name in modules:
        h.update(name.encode() + b"\0")
        h.update(_source_of(name) + b"\0")
    return "src-" + h.hexdigest()[:12]


def _module_of(task: Any) -> str:
    return str(getattr(task.fn, "__module__", None) or "?")


def _source_of(module: str) -> bytes:
    mod = sys.modules.get(module)
    path = getattr(mod, "__file__", None)
    if not path:
        return b""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def current_for(
    task_id: str,
    live: Iterable[LiveWorker],
    registered: Mapping[str, float],
    pinned: str | None,
) -> str | None:
    """The version that takes new runs of ``task_id``: the pinned one, else the newest
    registered among live serving (not draining) workers of the task."""
    if pinned is not None:
        return pinned
    best: tuple[float, str] | None = None
    for w in live:
        if w.draining or task_id not in w.tasks:
            continue
        key = (registered.get(w.version, w.started_at), w.version)
        if best is None or key > best:
            best = key
    return best[1] if best else None


def current_version(
    live: Iterable[LiveWorker], registered: Mapping[str, float], pinned: str | None
) -> str | None:
    """The environment's current version: pinned, else the newest registered among live
    serving workers, else the newest registered."""
    if pinned is not None:
        return pinned
    serving = {w.version for w in live if not w.draining}
    pool = {v: t for v, t in registered.items() if v in serving} or dict(registered)
    if not pool:
        return None
    return max(pool.items(), key=lambda kv: (kv[1], kv[0]))[0]


def version_table(store: VersionStore, env: str) -> list[VersionInfo]:
    """Every version known in ``env``: registered, with live workers, or with runs locked
    to it; newest first."""
    live = store.version_workers(env)
    registered = store.registered_versions(env)
    pinned = store.pinned_version(env)
    locked = store.locked_runs(env)
    current = current_version(live, registered, pinned)
    names = set(registered) | {w.version for w in live} | set(locked)
    if pinned:
        names.add(pinned)
    rows = []
    for v in names:
        mine = [w for w in live if w.version == v]
        rows.append(
            VersionInfo(
                version=v,
                registered_at=registered.get(v),
                workers=len(mine),
                draining=sum(1 for w in mine if w.draining),
                runs=dict(sorted(locked.get(v, {}).items())),
                current=v == current,
                pinned=v == pinned,
            )
        )
    rows.sort(key=lambda r: (r.registered_at or 0.0, r.version), reverse=True)
    return rows


def version_json(info: VersionInfo) -> dict[str, Any]:
    """One row of the table, as the HTTP API and ``--json`` show it."""
    return {
        "version": info.version,
        "registered_at": info.registered_at,
        "current": info.current,
        "pinned": info.pinned,
        "live_workers": info.workers,
        "draining_workers": info.draining,
        "locked_runs": info.runs,
        "unfinished_runs": info.unfinished,
        "retirable": info.retirable,
    }


def promote(store: VersionStore, env: str, version: str) -> None:
    """Pin ``version`` as the environment's current one: new runs go to it (rollback)."""
    check_version(version)
    store.pin_version(env, version)


def migrate(
    store: VersionStore, env: str, from_version: str, to_version: str, task_id: str | None = None
) -> int:
    """Re-lock the unfinished runs of ``from_version`` to ``to_version``; how many. Their
    journals replay on the new code; one it cannot replay fails loud (C8)."""
    check_version(from_version, "from")
    check_version(to_version, "to")
    if from_version == to_version:
        raise ValidationError("from and to are the same version", field="to")
    return store.migrate_runs(env, from_version, to_version, task_id)
