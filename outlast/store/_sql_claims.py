"""Claiming runs under queue limits: the part of the SQL store workers call to take work."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._serde import dumps, loads
from ._rows import (
    RATE_GUARD,
    Row,
    Tx,
    _b,
    _journal_entry,
    run_from_row,
)
from ._sql_core import SqlCore
from ._versions_base import VersionScope
from .base import (
    Claim,
    WaitpointState,
)


class ClaimsMixin(SqlCore):
    """Mixed into SqlStore; relies on its ``_transaction``, ``_list`` and ``now``."""

    # -- claiming -------------------------------------------------------------------------
    def claim(
        self,
        worker_id: str,
        env: str,
        serves: Mapping[str, Sequence[str]],
        limit: int,
        scope: VersionScope | None = None,
    ) -> list[Claim]:
        """Claim up to ``limit`` runs from the queues in ``serves`` (queue -> task ids).

        Capacity is read from counter rows in the same transaction that takes the runs
        (C5): a queue's global cap, each key's limit, and the rate window. Keys are served
        least-recently-served first, a fair share each, so one tenant's backlog cannot
        starve another's single run.
        """
        if limit <= 0 or not serves:
            return []
        now = self.now()
        with self._transaction() as tx:
            if not self._may_claim(tx, worker_id, now):
                return []
            return self._claim_in(tx, worker_id, env, serves, limit, now, scope=scope)

    def _claim_in(
        self,
        tx: Tx,
        worker_id: str,
        env: str,
        serves: Mapping[str, Sequence[str]],
        limit: int,
        now: float,
        locked: Sequence[Row] | None = None,
        reserve: Mapping[tuple[str, str], int] | None = None,
        scope: VersionScope | None = None,
    ) -> list[Claim]:
        """``claim`` inside the caller's transaction (a commit batch claims this way).
        ``locked``: the queue rows as the transaction locked them, if it did; read again
        only if one has a global limit, whose count this transaction's releases changed
        since (no other column of the row changes when runs end). ``reserve``: see
        ``Store.apply_and_claim``; reserved runs come last, with status DEQUEUED.
        ``scope``: the versions the worker may take (C11), any without one."""
        versions = _version_params(scope, self._list)
        if locked is None or any(q["global_limit"] is not None for q in locked):
            queues = tx.q("queues_for_claim", env=env, names=self._list(sorted(serves)))
        else:
            queues = list(locked)
        random.shuffle(queues)  # no queue always first when the worker's slots are few
        rows: list[Row] = []
        for q in queues:
            if len(rows) >= limit:
                break
            rows.extend(
                self._claim_from_queue(
                    tx, q, serves[q["name"]], limit - len(rows), now, worker_id, versions
                )
            )
        if reserve:
            rows.extend(self._reserve(tx, queues, serves, reserve, now, worker_id, versions))
        if not rows:
            return []
        # Start order: each key's runs in ready order, the keys taking turns, so a big
        # claim does not start one tenant's share before another's.
        rows.sort(key=lambda r: (r["ready_at"], r["id"]))
        turn: dict[tuple[str, str], int] = {}
        ranks: dict[str, int] = {}
        for r in rows:
            k = (r["queue"], r["concurrency_key"])
            ranks[r["id"]] = turn[k] = turn.get(k, -1) + 1
        # Stable: ready order within a turn; reserved runs after every claimed one.
        rows.sort(key=lambda r: (r["status"] == "DEQUEUED", ranks[r["id"]]))
        replaying = [r["id"] for r in rows if r["lease_epoch"] > 1]
        journals: dict[str, list[Row]] = {}
        logs: dict[str, int] = {}
        if replaying:
            for j in tx.q("journals_for_runs", ids=self._list(replaying)):
                journals.setdefault(j["run_id"], []).append(j)
            for c in tx.q("log_counts", ids=self._list(replaying)):
                logs[c["run_id"]] = int(c["n"])
        claims = []
        for r in rows:
            entries = journals.get(r["id"], [])
            claims.append(
                Claim(
                    run=run_from_row(r),
                    epoch=r["lease_epoch"],
                    logs_recorded=logs.get(r["id"], 0),
                    journal={j["key"]: _journal_entry(j) for j in entries},
                    waitpoints={
                        j["waitpoint_id"]: WaitpointState(
                            id=j["waitpoint_id"],
                            kind=j["wp_kind"],
                            status=j["wp_status"],
                            output=j["wp_output"],
                            is_error=_b(j["wp_is_error"]),
                        )
                        for j in entries
                        if j["waitpoint_id"] and j["wp_status"] is not None
                    },
                )
            )
        return claims

    def _reserve(
        self,
        tx: Tx,
        queues: Sequence[Row],
        serves: Mapping[str, Sequence[str]],
        reserve: Mapping[tuple[str, str], int],
        now: float,
        worker_id: str,
        versions: Mapping[str, Any],
    ) -> list[Row]:
        """Claim DEQUEUED the runs ``reserve`` asks for, per key whose slots are full, in
        queues with a concurrency limit and no rate limit (a hand-over must not start a
        run the rate window has no room for) that are not paused."""
        by_name = {q["name"]: q for q in queues}
        rows: list[Row] = []
        for (name, ckey), n in sorted(reserve.items()):
            q = by_name.get(name)
            if (
                n <= 0
                or q is None
                or q["paused"]
                or not q["has_queued"]
                or q["concurrency_limit"] is None
                or q["rate_limit_count"]
            ):
                continue
            rows.extend(
                tx.q(
                    "reserve_ready",
                    env=q["env"],
                    queue=name,
                    ckey=ckey,
                    now=now,
                    task_ids=self._list(list(serves[name])),
                    key_limit=q["concurrency_limit"],
                    n=n,
                    worker_id=worker_id,
                    **versions,
                )
            )
        return rows

    # over 60 lines: the fair-share pass, the round robin and the stamps share one claim's
    # bookkeeping (taken, counts, served, rooms); split, each would pass all of it around.
    def _claim_from_queue(
        self,
        tx: Tx,
        q: Row,
        task_ids: Sequence[str],
        budget: int,
        now: float,
        worker_id: str,
        versions: Mapping[str, Any],
    ) -> list[Row]:
        """Take up to ``budget`` ready runs of queue ``q``; their rows, already claimed."""
        if q["paused"] or not q["has_queued"]:
            return []
        cap = budget
        if q["global_limit"] is not None:
            cap = min(cap, q["global_limit"] - q["executing"])
        window: list[float] = []
        if q["rate_limit_count"]:
            span = q["rate_limit_period"] * (1 + RATE_GUARD)
            window = [t for t in loads(q["rate_window"]) if t > now - span]
            cap = min(cap, q["rate_limit_count"] - len(window))
        if cap <= 0:
            return []
        key_limit = q["concurrency_limit"]
        slots = q.get("open_slots")  # read ahead with the queue locks (PostgreSQL)
        if slots is None:
            slots = tx.q("open_slots", env=q["env"], queue=q["name"], key_limit=key_limit)
        tasks = self._list(list(task_ids))

        def ready(ckey: str, n: int) -> list[Row]:
            return tx.q(
                "claim_ready",
                env=q["env"],
                queue=q["name"],
                ckey=ckey,
                now=now,
                task_ids=tasks,
                n=n,
                worker_id=worker_id,
                **versions,
            )

        taken: list[Row] = []
        counts: dict[str, int] = {}  # key -> runs taken in this claim
        served: dict[str, int] = {}  # key -> when it last got runs in this claim
        seq = itertools.count()
        rooms: dict[str, int] = {}  # key -> its room, while it may have more ready
        idle: list[str] = []
        visited = 0
        share = max(1, cap // max(1, len(slots)))
        # First pass: a fair share for every key with room, least recently served first.
        for s in slots:
            if len(taken) >= cap or visited >= 4 * cap + 16:
                break
            visited += 1
            room = key_limit - s["executing"] if key_limit is not None else cap
            n = min(share, cap - len(taken), room)
            if n <= 0:
                continue
            got = ready(s["ckey"], n)
            if not got:
                idle.append(s["ckey"])
                continue
            taken.extend(got)
            counts[s["ckey"]] = len(got)
            served[s["ckey"]] = next(seq)
            if len(got) == n and room > n:
                rooms[s["ckey"]] = room
        # Then what idle keys left goes round robin to keys with more ready; without this
        # a key alone among idle ones would get one run per claim. Runs taken above are
        # EXECUTING already, so each read finds only runs not taken yet.
        hungry = list(rooms)
        while hungry and len(taken) < cap:
            per = max(1, (cap - len(taken)) // len(hungry))
            still = []
            for ckey in hungry:
                have = counts[ckey]
                want = min(rooms[ckey], have + per, have + cap - len(taken))
                if want <= have:
                    break
                more = ready(ckey, want - have)
                if more:
                    taken.extend(more)
                    counts[ckey] += len(more)
                    served[ckey] = next(seq)
                if counts[ckey] == want and want < rooms[ckey]:
                    still.append(ckey)
            hungry = still
        # Every key visited goes behind every key not visited: idle ones first, then the
        # served ones in the order they were last served. The stamps rise strictly even
        # when clocks tie (a fake clock) or lag (a worker whose clock is behind), so the
        # round robin never settles on one key.
        stamp = max([now, *(s["last_claim_at"] for s in slots)])
        order = [*idle, *sorted(counts, key=lambda k: served[k])]
        stamps = {ckey: stamp + (i + 1) * 1e-6 for i, ckey in enumerate(order)}
        if taken and q["rate_limit_count"]:
            window.extend([now] * len(taken))
        takes = {ckey: (counts.get(ckey, 0), stamp) for ckey, stamp in stamps.items()}
        if takes:
            self._take_slots(tx, q, takes, len(taken), dumps(window))
        return taken

    def _take_slots(
        self, tx: Tx, q: Row, takes: Mapping[str, tuple[int, float]], n: int, window: str
    ) -> None:
        """Record what a claim took from queue ``q``: per key, the runs taken (0 for a
        key found idle) and its new round-robin stamp; ``n`` in all, and the rate
        ``window``. A backend hook: PostgreSQL does it in one statement."""
        where = {"env": q["env"], "queue": q["name"]}
        for ckey, (k, stamp) in takes.items():
            if k:
                tx.x("take_slots", **where, ckey=ckey, n=k, stamp=stamp)
        idle = [{**where, "ckey": c, "stamp": st} for c, (k, st) in takes.items() if not k]
        if idle:
            tx.many("touch_slot", idle)
        if n:
            tx.x("take_queue", **where, n=n, rate_window=window)


def _version_params(
    scope: VersionScope | None, as_list: Callable[[list[str]], Any]
) -> dict[str, Any]:
    """The claim statements' version parameters: a NULL version takes any run."""
    if scope is None:
        return {"version": None, "new_task_ids": as_list([])}
    return {"version": scope.version, "new_task_ids": as_list(list(scope.new_task_ids))}
