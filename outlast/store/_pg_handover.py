"""PostgreSQL hand-overs: a trigger writes its run claimed by an idle worker that offered.

An idle claim costs a commit, and a commit a WAL flush: from a trigger to its body that
was two flushes one after the other, the trigger's and the claim's, which alone took
longer than a Redis-backed queue's whole start (bench/README.md, start latency). So a
worker whose claim came back short offers, in that claim's commit, to take one run
(``worker_offers``), and a single trigger that finds an offer and nothing ahead of its
run writes the run claimed by that worker (``insert_run_offered``, which keeps every
claim rule: C5's limits under the queue row's lock, C10's live holder, C11's versions).
Its NOTIFY names the worker and carries the run's row, and PostgreSQL sends it only
after the commit is flushed: the worker starts the body on a claim committed before it
(C3, C4), with one flush on the path.

A notification can be lost (the LISTEN connection dropped, the worker waiting in a
thread). The offer row keeps the run it was spent on until the worker's next claim
takes it back (``take_offer``, read in the claim's first round trip), and that claim
returns the run if it is still held under this worker at its first epoch; the worker
drops it if the notification brought it already. An idle worker claims at every poll,
so a hand-over whose notification was lost starts within a poll interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from psycopg.pq.misc import PGnotify

from ._rows import Row, run_from_row
from ._versions_base import VersionScope
from .base import Claim, Handover

_KEEP = 10_000  # payloads kept between two take_handovers, at most (one is plenty)


class HandoverMixin:
    """Mixed into PostgresStore, which provides ``q`` (its queries)."""

    q: dict[str, str]

    def _init_handovers(self) -> None:
        self._offered: set[str] = set()  # worker ids with an offer this store made
        self._payloads: list[str] = []  # notification payloads the last drains read
        self._offers_seen: dict[str, bool] = {}  # env -> the last single trigger saw offers

    def _take_offer(self, tx: Any, worker_id: str, offer: bool) -> Any:
        if not offer and worker_id not in self._offered:
            return None
        # Sent now, read after the queue locks' round trip (pipeline mode). It waits for a
        # trigger spending the offer at this moment, and then returns that run.
        return tx.conn.execute(self.q["take_offer"], {"worker_id": worker_id})

    def _offer_settled(self, tx: Any, taken: Any, worker_id: str, env: str,
                       serves: Mapping[str, Sequence[str]], scope: VersionScope | None,
                       short: bool) -> list[Claim]:
        rows = taken.fetchall()
        self._offered.discard(worker_id)
        if short:
            tx.send(
                "post_offer",
                worker_id=worker_id,
                env=env,
                serves=orjson.dumps({q: list(t) for q, t in serves.items()}).decode(),
                version=scope.version if scope is not None else None,
                new_task_ids=orjson.dumps(list(scope.new_task_ids) if scope else []).decode(),
            )
            self._offered.add(worker_id)
        return [_claim_of(r["run"]) for r in rows if r["run"] is not None]

    def _keep_payload(self, notify: PGnotify) -> None:
        if len(self._payloads) < _KEEP:
            self._payloads.append(notify.extra.decode())

    def take_handovers(self) -> tuple[list[Handover], bool]:
        payloads, self._payloads = self._payloads, []
        handovers: list[Handover] = []
        plain = False
        for p in payloads:
            if not p.startswith('{"push"'):
                plain = True  # an environment's name: work for any worker
                continue
            try:
                got = orjson.loads(p)
                row = got.get("run")
                handovers.append(Handover(
                    worker_id=got["push"],
                    run_id=row["id"] if row else got["id"],
                    claim=_claim_of(row) if row else None,
                ))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                plain = True  # not ours after all: wake everyone, the claim decides
        return handovers, plain


def _claim_of(row: Row) -> Claim:
    """The claim of a handed-over run: its first epoch, so no journal, waits or logs."""
    return Claim(run=run_from_row(row), epoch=row["lease_epoch"], journal={}, waitpoints={},
                 handed_over=True)
