"""Start latency at idle, outlast against Celery, in one sitting. Prints figures; never a test.

    .venv/bin/python bench/latency_bench.py [--reps R] [--samples N] [--src worktree[,REV...]]
                                            [--backends postgres,sqlite] [--no-celery]
                                            [--out FILE.json]

Each repetition runs every arm once, one after the other (the order rotates from one
repetition to the next), so a noisy minute on this shared machine falls on every arm alike:
outlast on each backend for each ``--src`` (``outlast_bench.py --only latency --reps 1``), and
Celery on Redis (``peers/celery_bench.py --only latency --reps 1``, in bench/.peers-venv).
Both measure the same thing by the same clock: ``time.time()`` just before the trigger call
(``Client.trigger`` / ``task.delay``) to ``time.time()`` at the first line of the task's body,
one job at a time with a random 0-30 ms gap, one worker. Each arm's p50, p95 and p99 are
per repetition; the table shows their medians over the repetitions (min-max), and the ratio
of each arm's median p50 to Celery's. bench/results/*.json are left alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

PEERS_PY = c.BENCH / ".peers-venv" / "bin" / "python"
PCTS = ("p50", "p95", "p99")


def arm_argv(arm: str, args: argparse.Namespace, out: Path) -> list[str]:
    if arm == "celery":
        return [str(PEERS_PY), str(c.BENCH / "peers" / "celery_bench.py"), "--only", "latency",
                "--reps", "1", "--samples", str(args.samples), "--out", str(out)]
    _, src, backend = arm.split(":")
    return [sys.executable, str(c.BENCH / "outlast_bench.py"), "--only", "latency",
            "--backend", backend, "--reps", "1", "--samples", str(args.samples),
            "--src", src, "--out", str(out)]


def run_arm(arm: str, args: argparse.Namespace) -> dict[str, float]:
    """One repetition of one arm: its trigger→start percentiles, in ms."""
    with tempfile.TemporaryDirectory(prefix="latency-bench-") as tmp:
        out = Path(tmp) / "res.json"
        proc = subprocess.run(arm_argv(arm, args, out), cwd=c.ROOT, capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"{arm} exited with {proc.returncode}: {proc.stderr[-2000:]}")
        res = c.Results.load(out)
    failed = [f.reason for f in res.failures if f.workload == "latency"]
    if failed:
        raise RuntimeError(f"{arm}: {failed}")
    got = {m.workload.removeprefix("latency_start_"): m.values[-1] for m in res.metrics
           if m.workload.startswith("latency_start_")}
    return {p: got[p] for p in PCTS}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--src", default="worktree",
                   help="comma list of outlasts to measure (worktree, or git revisions)")
    p.add_argument("--backends", default="postgres,sqlite")
    p.add_argument("--no-celery", action="store_true")
    p.add_argument("--out", default="", help="also write every figure to this JSON file")
    args = p.parse_args()
    arms = [f"outlast:{src}:{b}" for b in args.backends.split(",") if b
            for src in args.src.split(",") if src]
    if not args.no_celery:
        if not PEERS_PY.exists():
            raise SystemExit(f"{PEERS_PY} missing: bench/run_all.py --only celery creates it "
                             "(or pass --no-celery)")
        arms.append("celery")
    figures: dict[str, list[dict[str, float]]] = {a: [] for a in arms}
    print(f"{c.now_iso()}: {len(arms)} arms x {args.reps} reps, {args.samples} samples each",
          flush=True)
    for rep in range(args.reps):
        order = arms[rep % len(arms):] + arms[:rep % len(arms)]
        for arm in order:
            t0 = time.monotonic()
            got = run_arm(arm, args)
            figures[arm].append(got)
            print(f"  rep {rep + 1} {arm}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in
                                                           got.items())
                  + f" ({time.monotonic() - t0:.0f} s)", flush=True)
    print(f"\n{c.now_iso()}: trigger call → task body's first line, ms; median (min-max) of "
          f"{args.reps} reps of {args.samples} samples")
    celery_p50 = (statistics.median(f["p50"] for f in figures["celery"])
                  if "celery" in figures else None)
    print(f"{'arm':32} " + " ".join(f"{p:>22}" for p in PCTS) + "   p50 / Celery's")
    for arm, reps in figures.items():
        cells = []
        for pct in PCTS:
            vals = [r[pct] for r in reps]
            cells.append(f"{statistics.median(vals):.3f} ({min(vals):.2f}-{max(vals):.2f})")
        ratio = (f"{statistics.median(r['p50'] for r in reps) / celery_p50:.2f}x"
                 if celery_p50 else "")
        print(f"{arm:32} " + " ".join(f"{x:>22}" for x in cells) + f"   {ratio}")
    if args.out:
        Path(args.out).write_text(json.dumps({"started": c.now_iso(), "argv": sys.argv,
                                              "figures": figures}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
