"""Debounce and batch, the store's side: what a run to insert carries when it joins a
pending group instead of always being a new run (issue 20, part 5).

A group is the pending run of one (environment, task, kind, key): a DELAYED run that a
debounced trigger or event replaces in place (its payload and start time) and that a
batched event is appended to, for as long as it has not been promoted. The store keeps
one ``run_groups`` row per group and locks it first (an upsert), so concurrent triggers
for one key, on any number of processes, all see the one pending run
(``_sql_groups.py``). What the group is and its key are decided above the store: by
``_trigger.build_run`` for a direct trigger, by the event planner for a subscriber.
"""

from __future__ import annotations

from dataclasses import dataclass

DEBOUNCE = "debounce"
BATCH = "batch"
TRAILING = "trailing"
LEADING = "leading"


@dataclass(frozen=True)
class RunGroup:
    """How a run joins its group. ``key`` is the group's key on a run (an evaluated
    value); in a task's published subscription it is the expression that gives it."""

    kind: str  # DEBOUNCE | BATCH
    key: str
    # debounce: seconds of quiet after the last trigger before the run starts; batch:
    # seconds after the first event before the batch starts however full it is
    period: float
    # debounce: the longest a burst may postpone the run, from its first trigger
    timeout: float | None = None
    mode: str = TRAILING  # debounce: whose payload the run keeps (the last or the first)
    max_size: int = 0  # batch: a full batch starts at once

    def to_spec(self) -> dict[str, object]:
        return {"kind": self.kind, "key": self.key, "period": self.period,
                "timeout": self.timeout, "mode": self.mode, "max_size": self.max_size}

    @classmethod
    def from_spec(cls, spec: dict[str, object] | None) -> RunGroup | None:
        if not spec:
            return None
        timeout = spec.get("timeout")
        return cls(
            kind=str(spec["kind"]), key=str(spec.get("key") or ""),
            period=float(spec["period"]),  # type: ignore[arg-type]
            timeout=float(timeout) if timeout is not None else None,  # type: ignore[arg-type]
            mode=str(spec.get("mode") or TRAILING),
            max_size=int(spec.get("max_size") or 0),  # type: ignore[call-overload]
        )
