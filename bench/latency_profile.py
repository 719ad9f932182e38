"""Where one start's time goes, on PostgreSQL at idle: a profile, not a figure of record.

    .venv/bin/python bench/latency_profile.py [--samples N] [--runs R] [--src worktree|REV]

The load of ``outlast_bench.py --only latency`` (one ``outlast worker`` process,
concurrency 10, the bench's tasks; one ``bench-stamp`` run at a time, a random 0-30 ms gap),
with the worker's path stamped by the wall clock: the worker process imports this module
first, which wraps a few of outlast's functions to note when they ran (a list append each;
written out when the worker exits). Per start, from the trigger call:

- returned: ``Client.trigger`` returned (the INSERT and the NOTIFY committed);
- notified: the worker's loop read the NOTIFY (``_Watch._readable``);
- asked: the claim loop asked the committer to claim (``Committer.claim``);
- in thread: ``apply_and_claim`` began in the committer's thread;
- locked: the first round trip's results read (worker check, queue locks, open slots);
- picked: the claim statement's rows read;
- committed: COMMIT returned (the pipeline's exit);
- claimed: the claims handed to the worker on the loop;
- body: the first line of the task's body (the run's output);

or, for a run a trigger handed over to the worker (store/_pg_handover.py), after
notified:

- handed: the worker's loop took the hand-over (``Claiming._handed_over``);
- body: the first line of the task's body.

Each column is the p50 of the differences between consecutive stamps; a claim is
matched to its run by id, the NOTIFY to the last one read before that claim began.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

STEPS = ("returned", "notified", "asked", "in thread", "locked", "picked", "committed",
         "claimed", "body")
HANDED = ("handed", "body ")  # a run a trigger handed over: notified -> started -> body


# -- in the worker process ----------------------------------------------------------------------


def install(out: str) -> None:
    """Wrap the worker's path to stamp it; write the stamps to ``out`` at exit."""
    from outlast import _claiming, _committer, _wakeups
    from outlast.store import _sql_claims, _sql_commit, postgres

    log: list[tuple[str, float, Any]] = []
    now = time.time

    def wrap(owner: Any, name: str, before: str | None, after: str | None = None,
             ids: bool = False) -> None:
        inner = getattr(owner, name)

        def stamped(*a: Any, **k: Any) -> Any:
            if before:
                log.append((before, now(), None))
            got = inner(*a, **k)
            if after:
                found = None
                if ids:
                    found = [c.run.id for c in (got[1] if isinstance(got, tuple) else got)]
                log.append((after, now(), found))
            return got

        setattr(owner, name, stamped)

    def wrap_async(owner: Any, name: str, before: str) -> None:
        inner = getattr(owner, name)

        async def stamped(*a: Any, **k: Any) -> Any:
            log.append((before, now(), None))
            return await inner(*a, **k)

        setattr(owner, name, stamped)

    wrap(_wakeups._Watch, "_readable", "notified")
    wrap_async(_committer.Committer, "claim", "asked")
    wrap(_sql_commit.CommitMixin, "apply_and_claim", "in thread", "returned to thread", ids=True)
    wrap(postgres.PostgresStore, "_may_claim_and_lock", None, "locked")
    wrap(_sql_claims.ClaimsMixin, "_claim_from_queue", None, "picked")
    commit_tx = postgres.PostgresStore._commit_transaction

    def commit_stamped(self: Any) -> Any:
        cm = commit_tx(self)

        class Stamped:
            def __enter__(self) -> Any:
                return cm.__enter__()

            def __exit__(self, *exc: Any) -> Any:
                got = cm.__exit__(*exc)
                log.append(("committed", now(), None))
                return got

        return Stamped()

    postgres.PostgresStore._commit_transaction = commit_stamped  # type: ignore[method-assign]
    claimed = _claiming.Claiming.claimed

    def claimed_stamped(self: Any, claims: Any, limit: int) -> None:
        log.append(("claimed", now(), [c.run.id for c in claims]))
        claimed(self, claims, limit)

    _claiming.Claiming.claimed = claimed_stamped  # type: ignore[method-assign]

    def dump() -> None:
        Path(out).write_text(json.dumps(log))

    atexit.register(dump)
    handed = getattr(_claiming.Claiming, "_handed_over", None)  # absent before 0021
    if handed is None:
        return

    def handed_stamped(self: Any, handovers: Any) -> bool:
        log.append(("handed", now(), [h.run_id for h in handovers]))
        return bool(handed(self, handovers))

    _claiming.Claiming._handed_over = handed_stamped  # type: ignore[method-assign]


# -- the harness --------------------------------------------------------------------------------


def _worker(url: str, stamps: Path, src: Path) -> subprocess.Popen[bytes]:
    boot = (f"import sys; sys.path[:0] = [{str(src)!r}, {str(c.BENCH)!r}]; "
            f"import latency_profile; latency_profile.install({str(stamps)!r}); "
            "from outlast.cli import main; sys.exit(main())")
    argv = [sys.executable, "-c", boot, "worker", "--app", str(c.BENCH / "outlast_tasks.py"),
            "--database-url", url, "--env", "bench", "--concurrency", "10"]
    log = open(Path(tempfile.gettempdir()) / "latency-profile-worker.log", "wb")  # noqa: SIM115
    return subprocess.Popen(argv, cwd=src, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(src)})


def one_run(samples: int, src: Path) -> dict[str, list[float]]:
    """One worker, ``samples`` starts; per step, the ms from the previous step."""
    sys.path.insert(0, str(src))
    import outlast_tasks as t
    import psycopg

    from outlast.client import Client
    from outlast.store import open_store

    rng = random.Random(7)
    with c.fresh_database("postgres", "latency_profile") as url, \
            tempfile.TemporaryDirectory() as tmp:
        store = open_store(url)
        store.migrate()
        store.close()
        stamps = Path(tmp) / "stamps.json"
        client = Client(url, env="bench")
        db = psycopg.connect(url, autocommit=True)  # polled as outlast_bench.py polls

        def one(sql: str, *params: Any) -> Any:
            row = db.execute(sql, params).fetchone()
            return row[0] if row else None

        proc = _worker(url, stamps, src)
        sent: dict[str, tuple[float, float]] = {}
        try:
            c.wait_until(lambda: bool(one("SELECT count(*) FROM workers WHERE status = "
                                          "'alive'")), 30, 0.05, "worker registered")
            for i in range(samples + 5):
                t0 = time.time()
                h = client.trigger(t.stamp, i)
                t1 = time.time()
                c.wait_until(lambda h=h: one("SELECT status FROM runs WHERE id = %s", h.id)
                             == "COMPLETED", 10.0, 0.002, "run completed")
                if i >= 5:
                    sent[h.id] = (t0, t1)
                time.sleep(rng.uniform(0.0, 0.03))
            bodies = {i: float(client.retrieve(i).output) for i in sent}
        finally:
            c.stop_process(proc)
            client.close()
            db.close()
        log = json.loads(stamps.read_text())
    return _split(log, sent, bodies)


def _split(log: list[list[Any]], sent: dict[str, tuple[float, float]],
           bodies: dict[str, float]) -> dict[str, list[float]]:
    gaps: dict[str, list[float]] = {s: [] for s in (*STEPS, *HANDED, "total")}
    gaps["handed over"] = []
    for i, (name, at, ids) in enumerate(log):
        if name == "handed" and ids and ids[0] in sent:
            rid = ids[0]
            t0, t1 = sent[rid]
            notified = [a for n, a, _ in log[:i] if n == "notified"]
            marks = {"returned": t1, "notified": notified[-1], "handed": at,
                     "body ": bodies[rid]}
            prev = t0
            for s in ("returned", "notified", *HANDED):
                gaps[s].append((marks[s] - prev) * 1000)
                prev = marks[s]
            gaps["total"].append((bodies[rid] - t0) * 1000)
            gaps["handed over"].append(1)
            continue
        if name != "claimed" or not ids or ids[0] not in sent:
            continue
        rid = ids[0]
        # back from the claimed stamp to the apply_and_claim that returned this run
        back = i - 1
        while back >= 0 and not (log[back][0] == "returned to thread" and log[back][2]
                                 and rid in log[back][2]):
            back -= 1
        begin = back
        while begin >= 0 and log[begin][0] != "in thread":
            begin -= 1
        window = {n: a for n, a, _ in log[begin:back + 1]}
        notified = [a for n, a, _ in log[:begin] if n == "notified"]
        asked = [a for n, a, _ in log[:begin] if n == "asked"]
        t0, t1 = sent[rid]
        marks = {"returned": t1, "notified": notified[-1] if notified else None,
                 "asked": asked[-1] if asked else None, "in thread": window.get("in thread"),
                 "locked": window.get("locked"), "picked": window.get("picked"),
                 "committed": window.get("committed"), "claimed": at, "body": bodies[rid]}
        if any(v is None for v in marks.values()):
            continue
        prev = t0
        for s in STEPS:
            gaps[s].append((marks[s] - prev) * 1000)
            prev = marks[s]
        gaps["total"].append((bodies[rid] - t0) * 1000)
    return gaps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--src", default="worktree")
    args = p.parse_args()
    src, desc = c.outlast_source(args.src)
    print(f"{c.now_iso()}: {desc}; ms from the previous step, p50 (p90), per run")
    print(f"{'step':12} " + " ".join(f"{'run ' + str(r + 1):>16}" for r in range(args.runs)))
    runs = [one_run(args.samples, src) for _ in range(args.runs)]
    for s in (*STEPS, *HANDED, "total"):
        cells = []
        for g in runs:
            vals = sorted(g[s])
            cells.append(f"{statistics.median(vals):.3f} ({c.percentile(vals, 90):.2f})"
                         if vals else "-")
        print(f"{s:12} " + " ".join(f"{x:>16}" for x in cells))
    print(f"matched {[len(g['total']) for g in runs]} starts of {args.samples}; handed "
          f"over {[len(g['handed over']) for g in runs]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
