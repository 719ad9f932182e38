"""Many processes on one PostgreSQL (issue 18, capability 6), with bench/soak_many.py's
driver: real `outlast server` and `outlast worker` processes on the fault suite's private
cluster, runs with steps, durable sleeps, tokens completed over HTTP, children in limited
queues and first attempts that fail, triggered in batches over HTTP through both servers,
workers SIGKILLed and replaced while they run.

Every run completes, the liveness invariant holds, no step body runs twice except across
a kill (the ledger of step bodies against the journal's committed results) and no sample
of the runs table sees a limited queue above its limit. The default size takes seconds;
the full one (8 workers, 100,000 runs, two kills) runs under ``-m soak``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak_many import Soak, judge_steps, plan
from bench.soak_tasks import LIMITS, RUNS_PER

from .harness import PrivatePostgres

SIZES = [
    pytest.param(200, 3, (0.3,), id="3-workers-200-runs"),
    pytest.param(100_000, 8, (0.3, 0.6), id="8-workers-100000-runs", marks=pytest.mark.soak),
]


@pytest.mark.timeout(3600)
@pytest.mark.parametrize(("n", "workers", "kill_at"), SIZES)
def test_many_workers_and_servers_with_kills(
    private_pg: PrivatePostgres, tmp_path: Path, n: int, workers: int,
    kill_at: tuple[float, ...],
) -> None:
    soak = Soak(private_pg.new_database(), tmp_path, n=n, workers=workers, servers=2,
                kill_at=kill_at, timeout=3000)
    report = soak.run()
    assert report.violations == []
    assert report.runs == report.completed == soak.expected
    assert len(report.kills) == len(kill_at)
    assert {k.worker_pid for k in report.kills} == soak.killed
    assert all(report.max_executing.get(q, 0) <= limit for q, limit in LIMITS.items())
    if n >= 10_000:  # the queues were saturated: the limit is what held them
        assert report.max_executing == LIMITS
    else:
        assert all(report.max_executing.get(q, 0) >= 1 for q in LIMITS)
    assert report.samples > 10 and report.tokens_completed > 0


def test_plan_sizes_the_runs_children_included() -> None:
    top = plan(1_000)
    assert 1_000 <= sum(RUNS_PER[t] for t in top) < 1_000 + max(RUNS_PER.values())
    assert {"soak-steps", "soak-flaky", "soak-sleep", "soak-token", "soak-parent"} <= set(top)


def test_the_ledger_judge_refuses_a_repeat_outside_a_kill() -> None:
    """The check can fail: a body that ran twice in a live process, a body that ran after
    its result was committed, and a step with no execution are each a violation; a repeat
    whose first execution was in a killed process is not."""
    runs = [("r1", "soak-narrow-child"), ("r2", "soak-narrow-child"),
            ("r3", "soak-narrow-child"), ("r4", "soak-narrow-child")]
    ledger = {
        ("r1", "c"): [(1.0, 10, 1), (2.0, 20, 2)],  # 10 was killed: allowed
        ("r2", "c"): [(1.0, 30, 1), (2.0, 20, 2)],  # 30 lived: a double execution
        ("r3", "c"): [(1.0, 20, 1), (2.0, 20, 1)],  # committed the first, ran again
    }
    journal = {("r1", "c"): '"20:2"', ("r2", "c"): '"20:2"', ("r3", "c"): '"20:1"'}
    repeats, violations = judge_steps(runs, ledger, journal, killed={10})
    assert repeats == 1
    assert [v.split()[0] for v in violations] == ["r2", "r3", "r4"]
    ledger[("r3", "c")] = [(1.0, 20, 1)]
    journal[("r3", "c")] = '"20:9"'
    _, violations = judge_steps(runs[2:3], ledger, journal, killed=set())
    assert violations and "ran again after it" in violations[0]
