"""``TestRun``: one run as a test sees it, read fresh from the store on every access.

Everything here is a read: the run's row (status, output, attempts), its journal (which
steps completed, in order) and its events (which step failed on which attempt), so a
test asserts on what the platform recorded, not on what the task code believes.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from .. import _serde
from ..runs import JournalEntry, Run, RunEvent, RunStatus

if TYPE_CHECKING:
    from ._env import OutlastEnv


def step_name(key: str) -> str:
    """A journal key without its occurrence suffix: ``"page#3"`` -> ``"page"``."""
    base, sep, n = key.rpartition("#")
    return base if sep and n.isdigit() else key


class TestRun:
    """A run triggered through an ``OutlastEnv``. Attributes read the store each time, so
    after ``await env.advance(...)`` the same object shows the new state."""

    __test__ = False  # not a test class, whatever pytest's name matching thinks

    def __init__(self, env: OutlastEnv, run_id: str) -> None:
        self.env = env
        self.id = run_id

    def __repr__(self) -> str:
        return f"<TestRun {self.id} {self.status}>"

    # -- the run's row --------------------------------------------------------------------
    @property
    def run(self) -> Run:
        return self.env.retrieve(self.id)

    @property
    def status(self) -> RunStatus:
        return self.run.status

    @property
    def output(self) -> Any:
        return self.run.output

    @property
    def error(self) -> dict[str, Any] | None:
        return self.run.error

    @property
    def metadata(self) -> dict[str, Any]:
        return self.run.metadata

    @property
    def attempts(self) -> int:
        """How many attempts the run has started (1 for a run that never failed)."""
        return self.run.attempt

    @property
    def is_final(self) -> bool:
        return self.run.is_final

    # -- the journal and events -----------------------------------------------------------
    @property
    def journal(self) -> list[JournalEntry]:
        return self.env.store.journal(self.id)

    @property
    def events(self) -> list[RunEvent]:
        return self.env.store.events(self.id)

    @property
    def steps(self) -> list[str]:
        """The keys of the steps that completed, in the order they ran (a step called
        twice under one name has keys ``name`` and ``name#2``)."""
        done = [e for e in self.journal if e.kind == "step" and e.status == "done"]
        order = {k: i for i, k in enumerate(self.env.step_order.get(self.id, ()))}
        done.sort(key=lambda e: (e.finished_at or 0.0, order.get(e.key, len(order))))
        return [e.key for e in done]

    def step_attempts(self, key: str) -> dict[str, int]:
        """``{"completed_on": attempt, "failures": n}`` for one step key."""
        entry = next((e for e in self.journal if e.key == key and e.kind == "step"), None)
        failures = sum(1 for e in self._step_failures() if e == key)
        return {"completed_on": entry.attempt if entry else 0, "failures": failures}

    def _step_failures(self) -> list[str]:
        out = []
        for e in self.events:
            if e.kind == "step_failed" and isinstance(e.data, dict):
                out.append(str(e.data.get("step", "")))
        return out

    @property
    def step_runs(self) -> Counter[str]:
        """How many times each step's body ran, by name (occurrences of one name added
        up): its failures plus its one completion. A step replayed from the journal does
        not count; that is the point (C2)."""
        counts: Counter[str] = Counter(step_name(k) for k in self._step_failures())
        for e in self.journal:
            if e.kind == "step" and e.status == "done":
                counts[step_name(e.key)] += 1
        return counts

    def times_ran(self, step: str) -> int:
        """How many times the body of the step named ``step`` ran (all occurrences)."""
        return self.step_runs[step]

    @property
    def attempt_errors(self) -> list[str]:
        """The error message of each failed attempt, in order."""
        return [e.message or "" for e in self.events if e.kind == "attempt_failed"]

    @property
    def logs(self) -> list[tuple[str, str, Any]]:
        """``(level, message, fields)`` of each ``logger`` call the run made."""
        return [(e.level or "", e.message or "", e.data) for e in self.events if e.kind == "log"]

    # -- what it waits on -----------------------------------------------------------------
    @property
    def tokens(self) -> list[str]:
        """The ids of the waitpoint tokens the run created, in order."""
        entries = [e for e in self.journal if e.kind == "create_token" and e.output]
        entries.sort(key=lambda e: e.started_at)
        return [str(_serde.loads(e.output or "{}")["id"]) for e in entries]

    @property
    def token(self) -> str:
        """The token the run waits on now (the test's usual handle for an approval)."""
        waiting = [e.fingerprint for e in self.journal
                   if e.kind == "token" and e.status == "waiting" and e.fingerprint]
        if not waiting:
            raise AssertionError(f"run {self.id} ({self.status}) waits on no token")
        if len(waiting) > 1:
            raise AssertionError(f"run {self.id} waits on {len(waiting)} tokens: {waiting}")
        return waiting[0]

    @property
    def waiting_on(self) -> list[str]:
        """The journal keys of the run's waits that are not satisfied yet."""
        return [e.key for e in self.journal if e.status == "waiting"]

    @property
    def children(self) -> list[TestRun]:
        """The run's child runs, oldest first."""
        runs = self.env.store.list_runs(self.env.env, parent_id=self.id, limit=1000)
        return [TestRun(self.env, r.id) for r in sorted(runs, key=lambda r: r.id)]
