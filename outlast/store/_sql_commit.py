"""Committing a worker's batch: fenced step results, log lines, waits, suspends and
ends, written a kind at a time, optionally with the next claim in the same transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .._serde import dumps, loads, plain_text
from ..runs import RunStatus
from ._rows import (
    Row,
    Tx,
)
from ._sql_claims import ClaimsMixin
from ._versions_base import VersionScope
from .base import (
    Claim,
    EndSegment,
    LogLine,
    Op,
    SetMetadata,
    StartDequeued,
    StartWait,
    StepDone,
)


class CommitMixin(ClaimsMixin):
    # -- committing a worker's batch ------------------------------------------------------
    def apply(self, worker_id: str, ops: Sequence[Op]) -> list[bool]:
        if not ops:
            return []
        ok, _ = self.apply_and_claim(worker_id, ops, "", {}, 0)
        return ok

    # over 60 lines: one transaction's story, fence -> ops -> completions -> claim, kept in
    # one body so the order a reader checks C4/C5 against is the order on the page.
    def apply_and_claim(
        self,
        worker_id: str,
        ops: Sequence[Op],
        env: str,
        serves: Mapping[str, Sequence[str]],
        limit: int,
        reserve: Mapping[tuple[str, str], int] | None = None,
        scope: VersionScope | None = None,
        offer: bool = False,
    ) -> tuple[list[bool], list[Claim]]:
        now = self.now()
        ids = sorted({op.run_id for op in ops})
        claiming = (limit > 0 or bool(reserve)) and bool(serves)
        with self._commit_transaction() as tx:
            fenced = tx.q("fence", ids=self._list(ids), worker_id=worker_id, now=now) if ids else []
            held = {r["id"]: r for r in fenced}
            ok = [
                op.run_id in held and held[op.run_id]["lease_epoch"] == op.epoch for op in ops
            ]
            # Runs held DEQUEUED take ops only once a StartDequeued before them started
            # them, except a hand-back or cancel of one that never started.
            dequeued = {r["id"] for r in fenced if r["status"] == "DEQUEUED"}
            moving = {
                op.run_id
                for op, good in zip(ops, ok, strict=True)
                if good and isinstance(op, EndSegment | StartDequeued)
            }
            locked = None
            # Sent before the queue locks, read with them: no round trip of its own.
            offered = self._take_offer(tx, worker_id, offer) if claiming else None
            if claiming and not fenced:
                # A fence that found a run has already read the worker alive with its
                # lease current, in this transaction, so only a batch that fenced nothing
                # (and so moves nothing) pays for the check, with its queue locks. Should a
                # reaper mark the worker dead while this claim commits, the runs it took
                # are requeued by the orphan scan.
                claiming, locked = self._may_claim_and_lock(
                    tx, worker_id, now, env, sorted(serves)
                )
            elif moving or claiming:
                # Every queue row this transaction will lock, in one ordered statement.
                locked = self._lock_queues_for(
                    tx, sorted(moving), env, sorted(serves) if claiming else ()
                )
            ended: set[str] = set()
            completed: list[EndSegment] = []
            # The common ops of a batch are held and written a kind at a time, one
            # statement per kind where the backend can (see _Held), before any other op and
            # before the batch's completions and claim, so those see them written.
            pending = _Held()
            for i, op in enumerate(ops):
                if not ok[i] or op.run_id in ended:
                    continue
                if op.run_id in dequeued:
                    if isinstance(op, StartDequeued):
                        self._start_dequeued(tx, op.run_id, now)
                        dequeued.discard(op.run_id)
                        held[op.run_id] = {**held[op.run_id], "holds_slot": 1}
                        continue
                    if not (isinstance(op, EndSegment) and op.outcome in ("handback", "canceled")):
                        ok[i] = False
                        continue
                    if op.outcome == "handback":  # back to its place in the queue
                        ended.add(op.run_id)
                        tx.x("release_dequeued", run_id=op.run_id, now=now)
                        self._notify(tx, held[op.run_id]["env"])
                        continue
                elif isinstance(op, StartDequeued):
                    ok[i] = False  # started already: a replayed op
                    continue
                if isinstance(op, EndSegment):
                    ended.add(op.run_id)
                    if op.outcome == "completed":
                        completed.append(op)  # the hot path: finished together below
                        continue
                if not pending.hold(op):
                    self._write_held(tx, pending, now)
                    self._apply_one(tx, op, now)
            self._write_held(tx, pending, now)
            if completed:
                self._complete_runs(tx, completed, [held[op.run_id] for op in completed], now)
            # The slots this batch gave back are taken again before the same commit: one
            # transaction per flush, not one to end runs and another to start the next.
            claims = (
                self._claim_in(
                    tx, worker_id, env, serves, limit, now, locked, reserve or {}, scope
                )
                if claiming
                else []
            )
            if offered is not None:
                # A worker that may not claim (not alive, past its lease) starts nothing
                # it was handed either: the reaper requeues that run (C10).
                short = offer and claiming and len(claims) < limit
                handed = self._offer_settled(tx, offered, worker_id, env, serves, scope, short)
                claims = (handed if claiming else []) + claims
        return ok, claims

    def _start_dequeued(self, tx: Tx, run_id: str, now: float) -> None:
        """Start a run held DEQUEUED in the slot of its key that a run ending in this
        batch (or before it) gave back: no limit check, the slot was counted already."""
        row = tx.q("start_dequeued", run_id=run_id, now=now)[0]
        where = {"env": row["env"], "queue": row["queue"]}
        tx.x("take_queue_slot", **where)
        tx.x("take_slot", **where, ckey=row["concurrency_key"])

    def _complete_runs(
        self, tx: Tx, ops: Sequence[EndSegment], rows: Sequence[Row], now: float
    ) -> None:
        """Finish many completed runs with a fixed number of statements: one release per
        (queue, key) from their fenced ``rows``, the updates at once, one cleanup, one
        decrement per parent waitpoint. Queue rows before slot rows, names sorted: the
        order claims lock them in."""
        queues: dict[tuple[str, str], int] = {}
        slots: dict[tuple[str, str, str], int] = {}
        parents: dict[str, int] = {}
        for r in rows:
            if r["holds_slot"]:
                q = (r["env"], r["queue"])
                queues[q] = queues.get(q, 0) + 1
                k = (r["env"], r["queue"], r["concurrency_key"])
                slots[k] = slots.get(k, 0) + 1
            if r["parent_waitpoint_id"]:
                parents[r["parent_waitpoint_id"]] = parents.get(r["parent_waitpoint_id"], 0) + 1
        left = self._complete_rows(tx, ops, queues, slots, parents, now)
        for waitpoint_id, pending in sorted(left.items()):
            if pending <= 0:
                self._complete(tx, waitpoint_id, "completed", None, False, now)

    def _complete_rows(
        self,
        tx: Tx,
        ops: Sequence[EndSegment],
        queues: Mapping[tuple[str, str], int],
        slots: Mapping[tuple[str, str, str], int],
        parents: Mapping[str, int],
        now: float,
    ) -> dict[str, int]:
        """Give back ``queues`` and ``slots`` (counts per queue and per key), mark the runs
        of ``ops`` COMPLETED with their outputs, and lower each parent waitpoint's pending
        children by its count in ``parents``; the parents' counts left. A backend hook:
        PostgreSQL does it all in one round trip."""
        for (env, queue), n in sorted(queues.items()):
            tx.x("give_queue_slots", env=env, queue=queue, n=n)
        for (env, queue, ckey), n in sorted(slots.items()):
            tx.x("give_slots", env=env, queue=queue, ckey=ckey, n=n)
        tx.many(
            "complete_run",
            [{"run_id": op.run_id, "output": op.output, "now": now} for op in ops],
        )
        tx.x("usage_outbox_add", ids=self._list([op.run_id for op in ops]))
        tx.x("clear_runs_waits", ids=self._list([op.run_id for op in ops]))
        return self._children_done(tx, parents)

    def _children_done(self, tx: Tx, parents: Mapping[str, int]) -> dict[str, int]:
        """Lower each parent waitpoint's pending children, in id order (the order every
        batch locks them in); the counts left, for parents still pending."""
        left: dict[str, int] = {}
        for waitpoint_id, n in sorted(parents.items()):
            rows = tx.q("children_done", id=waitpoint_id, n=n)
            if rows:
                left[waitpoint_id] = int(rows[0]["pending_children"])
        return left

    def _write_held(self, tx: Tx, held: _Held, now: float) -> None:
        """Write what ``held`` holds, a kind at a time, and empty it."""
        if held.steps:
            self._insert_journal_rows(tx, held.steps)
        if held.lines:
            tx.many("insert_event", held.lines)
        if held.waits:
            self._start_waits(tx, held.waits, now)
        if held.suspends:
            self._suspend_runs(tx, held.suspends, now)
        held.clear()

    def _start_waits(self, tx: Tx, ops: list[StartWait], now: float) -> None:
        """Register waits (without children); a backend hook (PostgreSQL: one statement)."""
        for op in ops:
            self._start_wait(tx, op, now)

    def _suspend_runs(self, tx: Tx, ops: list[EndSegment], now: float) -> None:
        """Park runs on their waitpoints, or hand back those whose wait is satisfied
        already; a backend hook (PostgreSQL: one statement)."""
        for op in ops:
            self._end_segment(tx, op, now)

    def _insert_journal_rows(self, tx: Tx, rows: list[Row]) -> None:
        """Insert journal rows; a backend hook (PostgreSQL does it in one statement)."""
        tx.many("insert_journal", rows)

    def _apply_one(self, tx: Tx, op: Op, now: float) -> None:
        if isinstance(op, StepDone):
            tx.x("insert_journal", **_step_row(op))
        elif isinstance(op, LogLine):
            tx.x("insert_event", **_line_row(op))
        elif isinstance(op, SetMetadata):
            tx.x("set_metadata", run_id=op.run_id, metadata=op.metadata, now=now)
        elif isinstance(op, StartWait):
            self._start_wait(tx, op, now)
        elif isinstance(op, EndSegment):
            self._end_segment(tx, op, now)
        else:  # pragma: no cover - a programming error
            raise TypeError(f"unknown op {op!r}")

    def _start_wait(self, tx: Tx, op: StartWait, now: float) -> None:
        status, output = "waiting", None
        if op.new_waitpoint_kind is not None:
            assert op.waitpoint_id is not None
            env = tx.q("slot_of_run", run_id=op.run_id)[0]["env"]
            tx.x(
                "insert_waitpoint",
                id=op.waitpoint_id,
                env=env,
                kind=op.new_waitpoint_kind,
                run_id=op.run_id,
                timeout_at=op.timeout_at,
                idempotency_key=None,
                idempotency_expires_at=None,
                tags="[]",
                pending_children=0,
                now=now,
            )
        if op.children:
            results = self._insert_runs(tx, op.children, now)
            ids = [r.id for r in results]
            op.result_ids = ids
            output = dumps(ids)
            if op.kind == "trigger":
                status = "done"
            else:
                assert op.waitpoint_id is not None
                pending = sum(1 for r in results if not r.is_cached)
                for r in results:
                    if r.is_cached:
                        pending += tx.x(
                            "adopt_child", id=r.id, waitpoint_id=op.waitpoint_id
                        )
                self._raw(
                    tx,
                    "UPDATE waitpoints SET pending_children = :n WHERE id = :id",
                    {"n": pending, "id": op.waitpoint_id},
                )
                if pending == 0:
                    self._complete(tx, op.waitpoint_id, "completed", None, False, now)
        if status == "waiting" and op.waitpoint_id:
            state = tx.q("waitpoint_state", id=op.waitpoint_id)
            if state and state[0]["status"] != "pending":
                status = "done"  # already satisfied (a token completed before the wait)
        tx.x(
            "insert_journal",
            run_id=op.run_id,
            key=_journal_key(op.key),
            kind=op.kind,
            fingerprint=op.fingerprint,
            status=status,
            output=output,
            waitpoint_id=op.waitpoint_id,
            attempt=op.attempt,
            started_at=op.started_at,
            finished_at=now if status == "done" else None,
        )

    def _end_segment(self, tx: Tx, op: EndSegment, now: float) -> None:
        o = op.outcome
        if o == "completed":
            self._finish(tx, op.run_id, RunStatus.COMPLETED, now, output=op.output)
            return
        if o in ("failed", "timed_out", "canceled"):
            self._attempt_failed_event(tx, op, now)
            status = {
                "failed": RunStatus.FAILED,
                "timed_out": RunStatus.TIMED_OUT,
                "canceled": RunStatus.CANCELED,
            }[o]
            self._finish(tx, op.run_id, status, now, error=op.error)
            return
        slot = tx.q("slot_of_run", run_id=op.run_id)[0]
        self._release_slot(tx, slot)
        if o == "retry":
            self._attempt_failed_event(tx, op, now)
            assert op.retry_at is not None
            tx.x("retry_run", run_id=op.run_id, error=op.error, retry_at=op.retry_at, now=now)
        elif o == "handback":
            tx.x("handback_run", run_id=op.run_id, exec_seconds=op.exec_seconds, now=now)
        elif o == "suspend":
            for wp in op.wait_on:
                tx.x("insert_run_wait", waitpoint_id=wp, run_id=op.run_id)
            states = [tx.q("waitpoint_state", id=wp) for wp in op.wait_on]
            if any(s and s[0]["status"] != "pending" for s in states):
                # Satisfied between registering and suspending: replay now, don't park.
                tx.x("clear_run_waits", run_id=op.run_id)
                tx.x("handback_run", run_id=op.run_id, exec_seconds=op.exec_seconds, now=now)
                self._notify(tx, slot["env"])
            else:
                tx.x(
                    "suspend_run",
                    run_id=op.run_id,
                    exec_seconds=op.exec_seconds,
                    wait_reason=op.wait_reason,
                    now=now,
                )
        else:  # pragma: no cover
            raise ValueError(f"unknown outcome {o!r}")
        if o == "handback":
            self._notify(tx, slot["env"])

    def _attempt_failed_event(self, tx: Tx, op: EndSegment, now: float) -> None:
        err = loads(op.error) or {}
        self._attempt_ended(tx, op.run_id, now, plain_text(err.get("message")), op.error)




def _step_row(op: StepDone) -> Row:
    return {
        "run_id": op.run_id,
        "key": _journal_key(op.key),
        "kind": op.kind,
        "fingerprint": op.fingerprint,
        "status": "done",
        "output": op.output,
        "waitpoint_id": None,
        "attempt": op.attempt,
        "started_at": op.started_at,
        "finished_at": op.finished_at,
    }


def _journal_key(key: str) -> str:
    """A step's journal key, which a replay looks up as task code spells it: escaping a
    NUL would lose the match, and PostgreSQL refuses it raw, so no backend stores one
    (the committer then fails that run alone: ``unstorable_data``)."""
    if "\x00" in key:
        raise ValueError(f"a step name cannot contain NUL: {key!a}")
    return key


def _line_row(op: LogLine) -> Row:
    return {
        "run_id": op.run_id,
        "ts": op.ts,
        "kind": op.kind,
        "attempt": op.attempt,
        "level": op.level,
        "message": plain_text(op.message),
        "data": op.data,
    }


class _Held:
    """A commit batch's common ops, held to be written a kind at a time: step results,
    log lines, wait registrations (without children), suspends, in that order, and
    before any other op. Ops of different runs touch different rows, and within a run
    only one order matters, which that one keeps: a run's wait registration (its
    waitpoint) before its suspend reads it. A step and a wait are journal rows of
    different keys, and a suspend is a run's last op."""

    def __init__(self) -> None:
        self.steps: list[Row] = []
        self.lines: list[Row] = []
        self.waits: list[StartWait] = []
        self.suspends: list[EndSegment] = []

    def hold(self, op: Op) -> bool:
        """Hold ``op`` if it is one of the common kinds; False to apply it now."""
        if isinstance(op, StepDone):
            self.steps.append(_step_row(op))
        elif isinstance(op, LogLine):
            self.lines.append(_line_row(op))
        elif isinstance(op, StartWait) and not op.children:
            self.waits.append(op)
        elif isinstance(op, EndSegment) and op.outcome == "suspend":
            self.suspends.append(op)
        else:
            return False
        return True

    def clear(self) -> None:
        self.steps, self.lines, self.waits, self.suspends = [], [], [], []
