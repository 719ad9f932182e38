"""Group commit of triggers: the requests of one group in one transaction (see
``_group_trigger_base``)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from .._serde import dumps, loads
from ._group_trigger_base import TriggerRequest
from ._rows import Tx
from ._sql_core import SqlCore
from .base import NewRun, TriggerResult


class GroupTriggerMixin(SqlCore):
    """Mixed into SqlStore; relies on its ``trigger`` and ``_insert_runs``."""

    def trigger_group(self, requests: Sequence[TriggerRequest]) -> None:
        if all(r.request_key is None for r in requests):
            # Nothing but runs: one trigger of all of them (a lone run without a key takes
            # the backend's one-statement path), each request taking its share back.
            flat: list[NewRun] = [run for r in requests for run in r.runs]
            results = self.trigger(flat) if flat else []
            at = 0
            for r in requests:
                r.results, r.cached = results[at:at + len(r.runs)], False
                at += len(r.runs)
            return
        now = self.now()
        with self._transaction() as tx:
            plain: list[TriggerRequest] = []
            for r in requests:
                if r.request_key is None:
                    plain.append(r)
                    continue
                r.results, r.cached = trigger_once_in(self, tx, r.env, r.request_key,
                                                            r.runs, now)
            flat = [run for r in plain for run in r.runs]
            results = self._insert_runs(tx, flat, now) if flat else []
        at = 0
        for r in plain:
            r.results, r.cached = results[at:at + len(r.runs)], False
            at += len(r.runs)
        # Committed: as SqlStore.trigger does, later triggers skip the queue upserts.
        self._ensured.update((run.env, run.queue, run.concurrency_key)
                             for r in requests if not r.cached for run in r.runs)
        with contextlib.suppress(Exception):
            self.wake_local()



def trigger_once_in(core: SqlCore, tx: Tx, env: str, request_key: str, runs: Sequence[NewRun],
                    now: float) -> tuple[list[TriggerResult], bool]:
    """``runs`` inserted in ``tx`` under ``request_key``, unless a request with that key
    did already: then its runs, and True (``trigger_once``, and a keyed request of a
    group)."""
    if not tx.q("claim_request_key", env=env, key=request_key, now=now):
        rows = tx.q("request_response", env=env, key=request_key)
        stored = loads(rows[0]["response"]) if rows else None
        if stored is not None:
            return [TriggerResult(r["id"], True) for r in stored], True
    results = core._insert_runs(tx, runs, now)
    tx.x("set_request_response", env=env, key=request_key,
         response=dumps([{"id": r.id} for r in results]))
    return results, False
