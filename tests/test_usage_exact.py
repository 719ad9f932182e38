"""Usage rollups stay exact however commits land: each finished run is folded once,
including one whose finishing commit lands after the fold, with a ``finished_at`` older
than runs already folded (out of order across workers, or a slow commit); and the
contract migration that retires the ``runs_finished`` index hands over from its watermark
without counting a run twice or missing one."""

from __future__ import annotations

from typing import Any

from outlast._clock import FakeClock
from outlast.client import Client
from outlast.runs import RunStatus
from outlast.store import open_store
from outlast.store._schema_base import migration_files
from outlast.store._usage_base import DAY
from outlast.store.base import Store

T0 = 1_800_000_000.0 // DAY * DAY + 3600  # 01:00 UTC


def _trigger(client: Client, n: int) -> list[str]:
    return [client.trigger("exact-task", {"i": i}).id for i in range(n)]


def _finish(store: Any, run_id: str, at: float) -> None:
    """End a run in a transaction of its own, at ``at`` on its committer's clock."""
    with store._transaction() as tx:
        store._finish(tx, run_id, RunStatus.COMPLETED, at, output="1")


def _totals(store: Store) -> int:
    return sum(d.runs for d in store.usage_days("dev", T0 - DAY))


def _folded(store: Store) -> int:
    """Runs in the rollups proper (not the ones readers add from the outbox)."""
    with store._transaction() as tx:  # type: ignore[attr-defined]
        rows = store._raw(tx, "SELECT COALESCE(SUM(runs), 0) AS n FROM usage_daily", {})  # type: ignore[attr-defined]
    return int(rows[0]["n"])


def _trusted_client(store: Store) -> Client:
    from outlast.store._types import TaskDef

    store.publish_tasks("dev", [TaskDef(id="exact-task", queue="exact", payload_schema={},
                                        spec={})])
    return Client(store=store, env="dev")


def test_a_commit_landing_after_the_fold_with_an_older_finished_at_is_folded_once(
    store: Store, clock: FakeClock
) -> None:
    clock.set(T0)
    client = _trusted_client(store)
    a, b = _trigger(client, 2)
    _finish(store, b, T0 + 100)  # b finishes later by the clock, but commits first
    clock.set(T0 + 500)
    assert store.aggregate_usage(grace=0.0) == 1
    _finish(store, a, T0 + 50)  # a's commit lands after the fold, 50 s "in the past"
    assert _totals(store) == 2  # readers count it before it is folded
    assert store.aggregate_usage(grace=0.0) == 1
    assert store.aggregate_usage(grace=0.0) == 0
    assert _folded(store) == 2 and _totals(store) == 2


def test_a_finish_in_flight_while_the_fold_commits_is_folded_once_after(
    store: Store, clock: FakeClock, db_url: str, backend: str
) -> None:
    """PostgreSQL: two workers' transactions at once. One finishing transaction is open
    (its finished_at the oldest) while another finishes, the fold runs and commits; the
    open one then commits, and the next fold counts it: no grace period involved."""
    if backend != "postgres":
        return  # SQLite has one writer: a fold cannot run beside an open finish
    clock.set(T0)
    client = _trusted_client(store)
    a, b = _trigger(client, 2)
    other = open_store(db_url, clock)
    try:
        with other._transaction() as tx:  # type: ignore[attr-defined]
            other._finish(tx, a, RunStatus.COMPLETED, T0 + 1, output="1")  # type: ignore[attr-defined]
            _finish(store, b, T0 + 2)
            clock.set(T0 + 3)
            assert store.aggregate_usage(grace=0.0) == 1  # b; a is not committed yet
            assert _totals(store) == 1
        assert _totals(store) == 2
        assert store.aggregate_usage(grace=0.0) == 1  # a, older than b, still counted
        assert store.aggregate_usage(grace=0.0) == 0
        assert _folded(store) == 2
    finally:
        other.close()


def test_the_contract_migration_hands_over_from_the_index_watermark_exactly(
    store: Store, clock: FakeClock
) -> None:
    """The schema as it is between 0015_usage_outbox and 0019_drop_runs_finished (the
    index, outbox = 0): the index fold counts what is past its grace; then the contract
    migration runs, and the outbox fold counts exactly the rest."""
    with store._transaction() as tx:  # type: ignore[attr-defined]
        store._raw(tx, "UPDATE usage_state SET outbox = 0", {})  # type: ignore[attr-defined]
        store._raw(tx, "CREATE INDEX runs_finished ON runs (finished_at, id) "  # type: ignore[attr-defined]
                   "WHERE finished_at IS NOT NULL", {})
    clock.set(T0)
    client = _trusted_client(store)
    ids = _trigger(client, 5)
    for i, run_id in enumerate(ids[:4]):
        _finish(store, run_id, T0 + 10 * i)
    clock.set(T0 + 25 + 60)  # with 60 s of grace: the first three only
    assert store.aggregate_usage() == 3
    assert _totals(store) == 4
    _finish(store, ids[4], T0 + 40)
    (m,) = [m for m in migration_files(store.dialect) if m.name == "drop_runs_finished"]
    assert m.kind == "contract"
    with store._transaction() as tx:  # type: ignore[attr-defined]
        tx.script(m.sql)
    assert _totals(store) == 5
    assert store.aggregate_usage() == 2
    assert store.aggregate_usage() == 0
    assert _folded(store) == 5 and _totals(store) == 5
    with store._transaction() as tx:  # type: ignore[attr-defined]
        rows = store._raw(tx, "SELECT outbox FROM usage_state", {})  # type: ignore[attr-defined]
    assert int(rows[0]["outbox"]) == 1
