"""``logger``: task code's log lines, stored with the run in order with its steps."""

from __future__ import annotations

import logging
from typing import Any

from . import _serde
from ._run_context import _current
from .store.base import LogLine

log = logging.getLogger("outlast.task")


class _Logger:
    """``logger.info("page exported", page=3)``: stored with the run, in order with its
    steps, and passed to Python logging (logger ``outlast.task``)."""

    def _emit(self, level: str, message: str, fields: dict[str, Any]) -> None:
        ctx = _current.get()
        extra: dict[str, Any] = {"outlast_fields": fields}
        if ctx is not None:
            ctx.logs_emitted += 1
            if ctx.logs_emitted <= ctx.logs_recorded:
                return  # said already, by the segment that first ran this code
        if ctx is not None:
            extra.update(run_id=ctx.run.id, task_id=ctx.run.task_id, attempt=ctx.run.attempt)
            ctx.committer.submit_nowait(
                LogLine(
                    **ctx.op_base(),
                    ts=ctx.store.now(),
                    attempt=ctx.run.attempt,
                    level=level,
                    message=str(message),
                    data=_serde.to_json(fields) if fields else None,
                )
            )
        log.log(logging.getLevelName(level.upper()), message, extra=extra)

    def debug(self, message: str, **fields: Any) -> None:
        self._emit("debug", message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._emit("info", message, fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._emit("warning", message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._emit("error", message, fields)
