"""Group commit: the operations of every run a worker executes, one transaction per flush.

Task code and callers hear of an operation only after its transaction committed. Claims
ride on the same transactions (see ``Claimer``): a flush that ends runs claims their
replacements under the commit that frees their slots. A batch the database refuses on
its data is split down to the operations at fault, which fail their runs alone (C10).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from . import _serde
from ._quiet import can_run
from .store._versions_base import VersionScope
from .store.base import (
    Claim,
    EndSegment,
    LogLine,
    Op,
    SetMetadata,
    StartWait,
    StepDone,
    WorkerStore,
)

log = logging.getLogger("outlast.worker")

# Seconds a flush waits, at most, for the runs it woke to take their steps: a run whose
# code keeps yielding (a busy poll) does not hold every other run's commit back.
_SETTLE_BACKSTOP = 0.002


class Claimer(Protocol):
    """Who the committer claims for (the worker): claims ride on commit batches."""

    def claim_limit(self, ops: Sequence[Op]) -> int:
        """Free slots once the runs this batch ends have left; 0 claims nothing."""

    def claim_target(self) -> tuple[str, Mapping[str, Sequence[str]]]:
        """The environment and queues (queue -> task ids) to claim from; in a thread."""

    def reservations(self) -> Mapping[tuple[str, str], int]:
        """(queue, concurrency key) -> runs to claim DEQUEUED, to hand slots over to."""

    def claimed(self, claims: list[Claim], limit: int) -> None:
        """Start the runs a batch claimed (on the loop, before the next batch)."""

    def claim_scope(self) -> VersionScope | None:
        """The versions the worker may claim (C11); None for any."""

    def offers(self) -> bool:
        """Whether a claim that comes back short offers to take a run from a trigger."""


class Committer:
    """Group commit: every op submitted while a flush is in flight goes in the next one.

    With a ``claimer``, a flush that ends runs (or that a claim was asked for) also claims
    their replacements in the same transaction, so a finished run's slot is refilled
    under the commit that frees it; all claims go through here, one at a time, so they
    never overlap and over-fill the worker."""

    def __init__(
        self,
        store: WorkerStore,
        worker_id: str,
        *,
        max_batch: int = 1000,
        claimer: Claimer | None = None,
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.max_batch = max_batch
        self.claimer = claimer
        self._items: list[tuple[Op, asyncio.Future[bool] | None]] = []
        # The asyncio tasks waiting on each future in _items, and the tasks the last flush
        # woke or that just started a run: the next flush lets these take their steps first.
        self._waiting: dict[asyncio.Future[bool], asyncio.Task[Any]] = {}
        self._movers: list[asyncio.Task[Any]] = []
        self._claim_waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.ops = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="outlast-committer")

    async def submit(self, op: Op) -> bool:
        """Queue ``op`` and wait until it is committed; False if it was fenced out."""
        return await self.enqueue(op)

    def enqueue(self, op: Op) -> asyncio.Future[bool]:
        """Queue ``op`` now; the future says whether it committed (False: fenced out)."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        task = asyncio.current_task()
        if task is not None:
            self._waiting[fut] = task
        self._add(op, fut)
        return fut

    def started(self, task: asyncio.Task[Any]) -> None:
        """``task`` just started a run: the next flush lets it reach its first operation."""
        self._movers.append(task)

    def submit_nowait(self, op: Op) -> None:
        """Queue ``op`` (a log line, a metadata change) without waiting for it."""
        self._add(op, None)

    async def claim(self) -> None:
        """Claim with the next flush (now, if none is in flight) and wait for it."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._claim_waiters.append(fut)
        self._idle.clear()
        self._wake.set()
        await fut

    def _add(self, op: Op, fut: asyncio.Future[bool] | None) -> None:
        self._items.append((op, fut))
        self._idle.clear()
        self._wake.set()

    async def flush(self) -> None:
        await self._idle.wait()

    async def close(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                await self._settle()
                if not self._items and not self._claim_waiters:
                    break
                batch = self._items[: self.max_batch]
                del self._items[: self.max_batch]
                waiters, self._claim_waiters = self._claim_waiters, []
                ops = [op for op, _ in batch]
                limit = 0
                reserve: Mapping[tuple[str, str], int] = {}
                if self.claimer is not None and (
                    waiters or any(isinstance(op, EndSegment) for op in ops)
                ):
                    limit = self.claimer.claim_limit(ops)
                    reserve = self.claimer.reservations()
                ok, claims = await self._apply(ops, limit, reserve)
                self.batches += 1
                self.ops += len(batch)
                for (_, fut), good in zip(batch, ok, strict=True):
                    if fut is not None:
                        task = self._waiting.pop(fut, None)
                        if not fut.done():
                            fut.set_result(good)
                            if task is not None:
                                self._movers.append(task)
                if self.claimer is not None and (limit > 0 or reserve):
                    self.claimer.claimed(claims, limit)
                for w in waiters:
                    if not w.done():
                        w.set_result(None)
            if not self._items and not self._claim_waiters:
                self._idle.set()

    async def _settle(self) -> None:
        """Let runs that are ready to go on the loop take their steps first: those this
        committer woke (told their operation committed) and those just started. Their next
        operations join this batch, and the slots they leave are claimed in it, instead of
        waiting a flush. Yields until each has gone as far as it can (it finished, or awaits
        something not done yet: its next commit, a thread, I/O), not a number of turns."""
        deadline: float | None = None
        while True:
            await asyncio.sleep(0)
            self._movers = [t for t in self._movers if can_run(t)]
            if not self._movers:
                return
            if deadline is None:
                deadline = time.monotonic() + _SETTLE_BACKSTOP
            elif time.monotonic() >= deadline:
                self._movers.clear()
                return

    async def _apply(
        self, ops: list[Op], limit: int, reserve: Mapping[tuple[str, str], int]
    ) -> tuple[list[bool], list[Claim]]:
        try:
            return await self._commit(ops, limit, reserve)
        except _Refused as refused:
            log.warning(
                "the database refused a batch of %d operations (%s); finding the ones at fault",
                len(ops),
                refused.cause,
            )
        ok = await self._split(ops)
        claims: list[Claim] = []
        if limit > 0 or reserve:
            try:
                _, claims = await self._commit([], limit, reserve)
            except _Refused:
                log.exception("a claim was refused on its data; claiming nothing now")
        return ok, claims

    async def _commit(
        self, ops: list[Op], limit: int, reserve: Mapping[tuple[str, str], int]
    ) -> tuple[list[bool], list[Claim]]:
        """Commit ``ops`` (and claim, with a limit or reservations), retrying while the
        database is unreachable; _Refused if it refused the batch's data."""
        claimer = self.claimer

        def commit() -> tuple[list[bool], list[Claim]]:
            if (limit > 0 or reserve) and claimer is not None:
                env, serves = claimer.claim_target()
                return self.store.apply_and_claim(
                    self.worker_id, ops, env, serves, limit, reserve, claimer.claim_scope(),
                    claimer.offers(),
                )
            return self.store.apply(self.worker_id, ops), []

        delay = 0.05
        while True:
            try:
                return await asyncio.to_thread(commit)
            except Exception as exc:
                if self.store.refused_data(exc):
                    raise _Refused(exc) from exc
                # The database is unreachable or the transaction failed: nothing of this
                # batch is acknowledged; try the same batch again. Replaying it is safe:
                # journal writes are upserts and segment ends are fenced by status.
                log.exception("commit of %d operations failed; retrying", len(ops))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _split(self, ops: list[Op]) -> list[bool]:
        """Commit a batch the database refused on its data, in halves and in order, down
        to the operations at fault: each of those fails its run, the rest commit. A run's
        later operations are then fenced out by its final status, like a lost lease's."""
        if len(ops) == 1:
            return [await self._alone(ops[0])]
        half = len(ops) // 2
        ok: list[bool] = []
        for part in (ops[:half], ops[half:]):
            if len(part) == 1:
                ok.append(await self._alone(part[0]))
                continue
            try:
                ok += (await self._commit(part, 0, {}))[0]
            except _Refused:
                ok += await self._split(part)
        return ok

    async def _alone(self, op: Op) -> bool:
        """Commit ``op`` by itself; if the database refuses that too, fail its run:
        retrying would stop every run of this worker behind it (C10). False: ``op`` did
        not commit, and the run's code stops as if its lease were lost."""
        try:
            return (await self._commit([op], 0, {}))[0][0]
        except _Refused as refused:
            reason = str(refused.cause).encode("ascii", "backslashreplace").decode()
        what = _described(op)
        log.error(
            "run %s: the database refused its %s (%s); the run fails",
            op.run_id,
            what,
            reason,
            extra={"run_id": op.run_id},
        )
        end = EndSegment(
            run_id=op.run_id,
            epoch=op.epoch,
            outcome="failed",
            error=_error_json("unstorable_data", f"the run's {what} could not be stored: {reason}"),
        )
        try:
            await self._commit([end], 0, {})
        except _Refused:  # pragma: no cover - the failure is ASCII text of ours
            log.exception("run %s: its failure could not be stored either", op.run_id)
        return False


class _Refused(Exception):
    """The database refused a batch's data: the same batch would be refused again."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _described(op: Op) -> str:
    """What ``op`` stores, for an error message (ASCII: it may quote a step name)."""
    if isinstance(op, StepDone | StartWait):
        return f"step {op.key!a}"
    if isinstance(op, LogLine):
        return "log line"
    if isinstance(op, SetMetadata):
        return "metadata"
    if isinstance(op, EndSegment):
        return "output" if op.outcome == "completed" else f"end ({op.outcome})"
    return type(op).__name__


def _error_json(code: str, message: str) -> str:
    return _serde.dumps({"code": code, "message": message})
