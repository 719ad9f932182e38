"""``metadata``: a run's metadata, persisted as it changes, readable while the run runs."""

from __future__ import annotations

from typing import Any

from . import _serde
from ._run_context import RunContext, _require
from .store.base import SetMetadata


class _Metadata:
    """Run metadata: persisted as it changes, readable from outside while the run runs."""

    def _ctx(self) -> RunContext:
        return _require("metadata")

    def _save(self, ctx: RunContext) -> None:
        ctx.committer.submit_nowait(
            SetMetadata(**ctx.op_base(), metadata=_serde.to_json(ctx.metadata))
        )

    def set(self, key: str, value: Any) -> None:
        ctx = self._ctx()
        _serde.to_json(value)  # fail here, in the caller, if it cannot be stored
        ctx.metadata[key] = value
        self._save(ctx)

    def get(self, key: str, default: Any = None) -> Any:
        return self._ctx().metadata.get(key, default)

    def increment(self, key: str, by: float = 1) -> float:
        ctx = self._ctx()
        value = ctx.metadata.get(key, 0) + by
        ctx.metadata[key] = value
        self._save(ctx)
        return float(value)

    def delete(self, key: str) -> None:
        ctx = self._ctx()
        if ctx.metadata.pop(key, None) is not None:
            self._save(ctx)

    def current(self) -> dict[str, Any]:
        return dict(self._ctx().metadata)
