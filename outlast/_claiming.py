"""The worker's claiming and hand-over: which runs it takes, holds and starts.

Claims ride on the committer's batches (``Claimer``): a flush that ends runs claims their
replacements. Runs claimed beyond the free slots are held ready while recent runs are short
(``_room``, prefetch); runs of a full (queue, concurrency key) are held DEQUEUED and one
starts, in the slot it leaves, the moment a run of that key ends here (``_hand_over``).
``_claim_loop`` claims when nothing else does: at start, on a wake-up, after a full claim.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from . import _observe
from ._committer import _error_json
from ._worker_base import WorkerBase
from .runs import Run, RunStatus
from .store.base import Claim, EndSegment, Handover, Op, StartDequeued

_SHORT_RUN = 0.05  # seconds: runs averaging less are worth claiming ahead
_HOLD_SECONDS = 0.1  # of work, at most, held ready beyond the free slots
# How long a hand-over heard of is remembered by id and epoch; one still running here is
# recognised as such however late the claim that returns it again comes.
_HEARD_SECONDS = 600.0
_HAND_OVER_RUN = 1.0  # seconds: runs averaging less get successors held DEQUEUED


class Claiming(WorkerBase):
    def _queues_served(self) -> dict[str, list[str]]:
        """Queue -> task ids. Runs triggered onto a queue no task declares are served by
        any of our tasks, so the queue list is refreshed from the store now and then."""
        now = time.monotonic()
        if now - self._serves_at > 5.0:
            serves: dict[str, list[str]] = {}
            for t in self.tasks.values():
                serves.setdefault(t.queue.name, []).append(t.id)
            every = sorted(self.tasks)
            limited = set()
            with contextlib.suppress(Exception):
                for q in self.store.list_queues(self.env):
                    serves.setdefault(q["name"], every)
                    if q["concurrency_limit"] is not None and not q["rate_limit_count"]:
                        limited.add(q["name"])
            self._serves = serves
            self._limited = limited
            self._serves_at = now
        return self._serves

    # Claims ride on the committer's batches (see Committer): these three are its Claimer.
    def claim_limit(self, ops: Sequence[Op]) -> int:
        if self._stopping or self._lost:
            return 0
        self._claim_generation = self._generation
        ending = {
            op.run_id
            for op in ops
            if isinstance(op, EndSegment)
            and op.run_id in self.active
            and op.run_id not in self._finishing
        }
        return self._room() + len(ending)

    def claim_target(self) -> tuple[str, Mapping[str, Sequence[str]]]:
        return self.env, self._queues_served()

    def reservations(self) -> Mapping[tuple[str, str], int]:
        """For keys whose runs ended since the last claim: enough runs held DEQUEUED to
        hand over about 0.1 s of work (as ``_room`` holds ready runs), at most one per
        run of the key executing here, and one for a key with none executing (the claim
        in the same commit may start one; if not, ``_trim_reserved`` gives it back). Runs
        averaging a second or more get none: a flush is small against them, and a held
        run might have started elsewhere."""
        keys, self._reserve_keys = self._reserve_keys, set()
        avg = self._avg_seconds
        if self._lost:
            return {}
        self._claim_generation = self._generation
        if self._stopping or avg is None or avg >= _HAND_OVER_RUN or not keys:
            return {}
        executing = dict.fromkeys(keys, 0)
        for ctx in self.active.values():
            k = _key_of(ctx.run)
            if k in executing and ctx.run.id not in self._finishing:
                executing[k] += 1
        want = {}
        for k, n in executing.items():
            held = len(self._reserved.get(k, ()))
            more = min(max(n, 1), max(1, int(n * _HOLD_SECONDS / max(avg, 1e-4)))) - held
            if more > 0:
                want[k] = more
        return want

    def offers(self) -> bool:
        """Offer to take runs straight from triggers only while a notification reaches
        this worker on the loop: a hand-over it does not hear waits for its next claim."""
        return self._wakeups.watching and not self._stopping and not self._lost

    def claimed(self, claims: list[Claim], limit: int) -> None:
        if any(c.handed_over for c in claims):
            claims = [c for c in claims if not c.handed_over or self._first_handover(c)]
        if self._lost or self._claim_generation != self._generation:
            # Claimed across a loss of identity: never started (C4). Handed back under
            # the current identity; if they were taken under the lost one, that is fenced
            # out and the reaper requeues them (C10).
            for c in claims:
                self.committer.submit_nowait(_handback(c))
            return
        if _observe.OBSERVERS:
            _observe.claimed(claims, self.store.now())
        ready = [c for c in claims if c.run.status != RunStatus.DEQUEUED]
        if limit > 0:
            self._dry = len(ready) < limit
        self.claimed_total += len(ready)
        self._ready.extend(ready)
        self._start_ready()
        keys = set()
        for c in claims:
            if c.run.status == RunStatus.DEQUEUED:
                k = _key_of(c.run)
                self._reserved.setdefault(k, collections.deque()).append(c)
                keys.add(k)
        for k in keys:
            self._trim_reserved(k)

    def _handed_over(self, handovers: Sequence[Handover]) -> bool:
        """Start the runs triggers handed to this worker (its notification, on the
        loop): each was committed claimed by this worker before the notification was
        sent. True if one came without its row: the next claim returns it."""
        claim_now = False
        for h in handovers:
            if h.worker_id != self.id or self._lost:
                continue  # a peer's, or an identity lost since: a reaper requeues it
            if h.claim is None:
                claim_now = True
            elif self._first_handover(h.claim):
                if self._stopping:
                    self.committer.submit_nowait(_handback(h.claim))
                    continue
                if _observe.OBSERVERS:
                    _observe.claimed([h.claim], self.store.now())
                self.claimed_total += 1
                self._ready.append(h.claim)
                self._start_ready()
        return claim_now

    def _first_handover(self, claim: Claim) -> bool:
        """Whether a hand-over is heard of for the first time: it comes by notification
        and again in the next claim (which takes the offer back), in either order."""
        run_id = claim.run.id
        key = (run_id, claim.epoch)
        if key in self._handovers or run_id in self.active or run_id in self._finishing or \
                any(c.run.id == run_id for c in self._ready):
            return False  # heard of already: the claim that returns it again may come late
        now = time.monotonic()
        # Oldest first (a dict keeps insertion order): each entry is dropped once, so the
        # pruning costs nothing per hand-over however many a busy minute brings.
        while self._handovers:
            oldest = next(iter(self._handovers))
            if now - self._handovers[oldest] < _HEARD_SECONDS:
                break
            del self._handovers[oldest]
        self._handovers[key] = now
        return True

    def _room(self) -> int:
        """How many runs to claim now: the free slots, plus some held ready while recent
        runs took under 50 ms on average: at most ``prefetch``, and at most about 0.1 s
        of work at that average, so a held run never waits long. Long runs get none
        held: a run waiting here behind a long one could have started elsewhere."""
        avg = self._avg_seconds
        ahead = 0
        if avg is not None and avg < _SHORT_RUN:
            ahead = min(self.prefetch, int(self.concurrency * _HOLD_SECONDS / max(avg, 1e-4)))
        return self.concurrency + ahead - self._busy() - len(self._ready)

    def _busy(self) -> int:
        """Runs whose code is executing (those only committing their end do not count),
        and threads of sync code that outlived their attempt."""
        return len(self.active) - len(self._finishing) + len(self._overrun)

    def _start_ready(self) -> None:
        while self._ready and self._busy() < self.concurrency and not self._stopping:
            self._launch(self._ready.popleft())

    async def _claim(self) -> int:
        """Claim as many runs as there are free slots; how many were started."""
        before = self.claimed_total
        await self.committer.claim()
        return self.claimed_total - before

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        """Claims when slots are free and there may be work: at start, after a wake-up
        (a notification or the poll), and after a claim that filled every free slot.
        Runs that end free their slots in the commit that ends them, and the committer
        claims again there; this loop covers the rest."""
        assert self._slot_freed is not None and self._found is not None
        stop_wait = asyncio.create_task(stop.wait())
        woke = True
        try:
            while not stop.is_set():
                if self._lost:  # nothing is claimed before a new identity is registered
                    found = asyncio.create_task(self._found.wait())
                    await asyncio.wait({stop_wait, found}, return_when=asyncio.FIRST_COMPLETED)
                    found.cancel()
                    woke = True
                    continue
                free = self._room()
                if free > 0 and (woke or not self._dry):
                    woke = False
                    await self._claim()
                    if not self._dry:
                        continue
                idle = self._room() > 0
                if idle and self._waiter is not None and self._waiter.done():
                    # Woken while the last claim was in flight: that wake-up may be for
                    # work the claim did not see yet, so claim again before waiting.
                    self._waiter = None
                    woke = True
                    continue
                waits: set[asyncio.Future[Any]] = {stop_wait}
                slot = asyncio.create_task(self._slot_freed.wait())
                waits.add(slot)
                if idle:
                    if self._waiter is None:
                        self._waiter = asyncio.ensure_future(
                            self._wakeups.wait(self.poll_interval)
                        )
                    waits.add(self._waiter)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                slot.cancel()
                self._slot_freed.clear()
                if self._waiter is not None and self._waiter.done():
                    self._waiter = None
                    woke = True
        finally:
            stop_wait.cancel()

    def _hand_back_held(self, queues: set[str] | None = None) -> None:
        """Runs held DEQUEUED (in ``queues``, or all of them) go back to their places in
        their queues, attempt unspent."""
        for k in [k for k in self._reserved if queues is None or k[0] in queues]:
            for claim in self._reserved.pop(k):
                self.committer.submit_nowait(_handback(claim))

    def _cancel_ready(self, run_id: str) -> None:
        """A run cancelled while held ready (or DEQUEUED) ends here, never having started."""
        for queue in (self._ready, *self._reserved.values()):
            for claim in list(queue):
                if claim.run.id != run_id:
                    continue
                queue.remove(claim)
                self._reserved = {k: held for k, held in self._reserved.items() if held}
                self.committer.submit_nowait(
                    EndSegment(
                        run_id=run_id,
                        epoch=claim.epoch,
                        outcome="canceled",
                        error=_error_json("canceled", "the run was canceled"),
                    )
                )

    def _slot_signal(self) -> None:
        """Tell the claim loop a slot was freed, when that can change what it does: its
        last claim filled every slot it had (claim again), or it waits with no poll in
        flight (start one). A dry claim loop already waiting on the poll would only wake,
        find nothing to do and wait again, once per run ended (every couple of
        milliseconds in a fan-out). Skipping those wake-ups saves loop work; on its own
        it moved no fan-out figure beyond the noise."""
        if self._slot_freed is not None and (not self._dry or self._waiter is None):
            self._slot_freed.set()

    def _hand_over(self, run: Run) -> None:
        """Start the next run held DEQUEUED for the queue and key of ``run``, whose end
        was just queued, in the slot that end gives back. Its start is queued right
        after that end, so both commit in one batch, before any op of its own; its code
        runs now instead of a flush later. Should the worker die first, the dead
        worker's DEQUEUED runs count a lost attempt, like its EXECUTING ones (C9)."""
        k = _key_of(run)
        if run.queue in self._limited:
            self._reserve_keys.add(k)
        held = self._reserved.get(k)
        if held and not self._stopping:
            claim = held.popleft()
            self.committer.submit_nowait(StartDequeued(run_id=claim.run.id, epoch=claim.epoch))
            self._launch(claim)
            # One run of the key left and one started: no more held than before, so
            # nothing to trim (its scan of the active runs is per hand-over otherwise).
            if not held:
                del self._reserved[k]
            return
        self._trim_reserved(k)

    def _trim_reserved(self, k: tuple[str, str]) -> None:
        """Hand back runs held for key ``k`` beyond its runs executing here: each of
        those hands over one when it ends, and a held run with none left would wait for
        nothing. The newest go back, to their places in the queue."""
        held = self._reserved.get(k)
        if not held:
            self._reserved.pop(k, None)
            return
        executing = sum(
            1
            for ctx in self.active.values()
            if ctx.run.id not in self._finishing and _key_of(ctx.run) == k
        ) + sum(1 for c in self._ready if _key_of(c.run) == k)
        while len(held) > executing:
            self.committer.submit_nowait(_handback(held.pop()))
        if not held:
            del self._reserved[k]


def _key_of(run: Run) -> tuple[str, str]:
    """The (queue, concurrency key) whose slots a run counts in; '' for no key."""
    return run.queue, run.concurrency_key or ""


def _handback(claim: Claim) -> EndSegment:
    """Give a claimed run that never started back to its queue, attempt unspent."""
    return EndSegment(
        run_id=claim.run.id,
        epoch=claim.epoch,
        outcome="handback",
        exec_seconds=claim.run.exec_seconds,
    )
