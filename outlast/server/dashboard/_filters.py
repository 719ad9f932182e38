"""The runs list's filters, read from a query string or a form and written back to one."""

from __future__ import annotations

import datetime as _dt
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..._errors import ValidationError
from ...runs import RunStatus

STATUSES = [s.value for s in RunStatus]
RANGES = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400,
          "30d": 30 * 86400}
PAGE_SIZE = 50


def _parse_time(text: str, name: str) -> float | None:
    """``YYYY-MM-DDTHH:MM[:SS]`` (a datetime-local field, read as UTC) or epoch seconds."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        value = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(f"{name}: not a date and time: {text!r}", field=name) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    return value.timestamp()


@dataclass
class RunFilter:
    status: list[str] = field(default_factory=list)
    task: str = ""
    tag: str = ""
    queue: str = ""
    range: str = ""
    from_: str = ""
    to: str = ""
    search: str = ""
    before: str = ""

    @classmethod
    def read(cls, get: Callable[[str], str], getlist: Callable[[str], list[str]]
             ) -> RunFilter:
        statuses = []
        for raw in getlist("status"):
            for s in raw.split(","):
                s = s.strip().upper()
                if s in STATUSES and s not in statuses:
                    statuses.append(s)
        rng = get("range")
        return cls(
            status=statuses,
            task=get("task"),
            tag=get("tag"),
            queue=get("queue"),
            range=rng if rng in RANGES or rng == "custom" else "",
            from_=get("from"),
            to=get("to"),
            search=get("search"),
            before=get("before"),
        )

    def store_kwargs(self, now: float) -> dict[str, Any]:
        created_from = created_to = None
        if self.range in RANGES:
            created_from = now - RANGES[self.range]
        elif self.range == "custom" or self.from_ or self.to:
            created_from = _parse_time(self.from_, "from")
            created_to = _parse_time(self.to, "to")
        return {
            "status": self.status or None,
            "task_id": self.task or None,
            "tag": self.tag or None,
            "queue": self.queue or None,
            "created_from": created_from,
            "created_to": created_to,
            "search": self.search or None,
        }

    def pairs(self, *, cursor: bool = True) -> list[tuple[str, str]]:
        out = [("status", s) for s in self.status]
        for name, value in (("task", self.task), ("tag", self.tag), ("queue", self.queue),
                            ("range", self.range), ("from", self.from_), ("to", self.to),
                            ("search", self.search)):
            if value:
                out.append((name, value))
        if cursor and self.before:
            out.append(("before", self.before))
        return out

    def query(self, *, cursor: bool = True, **extra: str) -> str:
        pairs = self.pairs(cursor=cursor) + [(k, v) for k, v in extra.items() if v]
        return urllib.parse.urlencode(pairs)

    @property
    def active(self) -> bool:
        return bool(self.pairs(cursor=False))

    def describe(self) -> str:
        parts = []
        if self.status:
            parts.append("status " + " or ".join(self.status))
        if self.task:
            parts.append(f"task {self.task}")
        if self.tag:
            parts.append(f"tag {self.tag}")
        if self.queue:
            parts.append(f"queue {self.queue}")
        if self.range and self.range != "custom":
            parts.append(f"created in the last {self.range}")
        if self.from_ or self.to:
            parts.append(f"created {self.from_ or '…'} to {self.to or '…'} UTC")
        if self.search:
            parts.append(f"id or idempotency key {self.search!r}")
        return ", ".join(parts) or "all runs"
