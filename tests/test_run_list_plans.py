"""The run lists go by the id-key indexes (issue 18, migration 0023_runs_list_keys):
runs_env_idp (env, substr(id, 5, 12)) and runs_env_task_idp (env, task_id, substr(id, 5,
12)), whose keys are 14 bytes narrower than the whole id. A page after a cursor is a range
of the key, not a walk from the newest run; a list of one task goes by the task's index;
a bulk action's bound and batches and a page of COMPLETED runs too. Plans, not timings,
on a database of 20,000 finished runs (tests/test_history_plans.py's), after ANALYZE."""

from __future__ import annotations

from typing import Any

from outlast.client import Client
from outlast.store._bulk_base import BulkAction, BulkFilter
from outlast.store.base import Store
from tests.test_history_plans import _fill, _full_scan, _plans

MID = "run_" + "0000010000" + "0" * 16  # a COMPLETED run's id halfway through the history


def _key_range(plan: str, index: str, backend: str) -> bool:
    """The plan reads ``index`` over a range of the id key, not all of it."""
    if backend == "sqlite":
        return f"USING INDEX {index} (" in plan and ("<expr><" in plan or "<expr>>" in plan)
    return f"using {index} on runs" in plan and "substr(id, 5, 12) <" in plan.split(
        "Index Cond:", 1)[-1].split("|", 1)[0]


def test_a_page_after_a_cursor_is_a_range_of_the_id_key(
    store: Store, client: Client, backend: str
) -> None:
    _fill(store, client, backend)
    (first,) = _plans(store, backend, lambda: store.list_runs("dev", limit=50))
    assert "runs_env_idp" in first and not _full_scan(first), first
    (page,) = _plans(store, backend, lambda: store.list_runs("dev", limit=50, before=MID))
    assert _key_range(page, "runs_env_idp", backend) and not _full_scan(page), page
    (done,) = _plans(store, backend, lambda: store.list_runs(
        "dev", status=["COMPLETED"], limit=50, before=MID))
    assert _key_range(done, "runs_env_idp", backend) and not _full_scan(done), done


def test_a_tasks_list_goes_by_the_tasks_index(
    store: Store, client: Client, backend: str
) -> None:
    _fill(store, client, backend)
    with store._transaction() as tx:  # type: ignore[attr-defined]
        # 1 run in 100 of another task, all through the history
        store._raw(tx, "UPDATE runs SET task_id = 'plan-rare' WHERE status = 'COMPLETED' "  # type: ignore[attr-defined]
                   "AND substr(id, 13, 2) = '00'", {})
        store._raw(tx, "ANALYZE", {})  # type: ignore[attr-defined]
    for before in (None, MID):
        (plan,) = _plans(store, backend, lambda b=before: store.list_runs(  # type: ignore[misc]
            "dev", task_id="plan-rare", limit=50, before=b))
        assert "runs_env_task_idp" in plan and not _full_scan(plan), plan


def test_bulk_action_batches_and_its_bound_use_the_id_key(
    store: Store, client: Client, backend: str
) -> None:
    _fill(store, client, backend)
    bulk = BulkAction(
        id="bulk_1", env="dev", action="cancel", filter=BulkFilter(), bound_id="run_" + "9" * 26,
        cursor=MID, status="running", total=0, processed=0, succeeded=0, requested=0,
        skipped=0, last_error=None, created_at=0.0, updated_at=0.0, finished_at=None)
    (plan,) = _plans(store, backend, lambda: store.bulk_candidates(bulk, 100))
    assert "runs_env_idp" in plan and not _full_scan(plan), plan
    from outlast.store._rows import load_queries

    prefix = "EXPLAIN QUERY PLAN " if backend == "sqlite" else "EXPLAIN "
    with store._transaction() as tx:  # type: ignore[attr-defined]
        rows: Any = store._raw(  # type: ignore[attr-defined]
            tx, prefix + load_queries(backend)["newest_run_id_by_key"], {"env": "dev"})
        newest = store._raw(  # type: ignore[attr-defined]
            tx, load_queries(backend)["newest_run_id_by_key"], {"env": "dev"})
        top = store._raw(tx, "SELECT MAX(id) AS id FROM runs WHERE env = 'dev'", {})  # type: ignore[attr-defined]
    plan = " | ".join(str(v) for r in rows for v in r.values())
    assert "runs_env_idp" in plan and not _full_scan(plan), plan
    assert newest[0]["id"] == top[0]["id"]  # the same run as MAX(id)
