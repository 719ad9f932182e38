"""Run outlast's benchmarks and the peers', then write bench/RESULTS.md with ratios.

    .venv/bin/python bench/run_all.py [--quick] [--reps R] [--src HEAD] [--only SYSTEMS]
                                      [--no-install]

outlast runs with the project venv (this interpreter). The peers (PgQueuer, Procrastinate,
Celery, DBOS) run in bench/.peers-venv, created here from bench/peers/requirements.txt
unless --no-install. A peer that fails to install or to run is recorded as a failure in
RESULTS.md; the others carry on. Every system's figures land in bench/results/<system>.json,
so ratios in RESULTS.md compare figures from this one run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import _report

PEERS_VENV = c.BENCH / ".peers-venv"
PEERS_PY = PEERS_VENV / "bin" / "python"
REQUIREMENTS = c.BENCH / "peers" / "requirements.txt"
SYSTEMS = ["outlast", "pgqueuer", "procrastinate", "celery", "dbos"]
# the distributions each peer needs (a failed install marks only these peers as failed)
NEEDS = {"pgqueuer": ["pgqueuer", "asyncpg", "psycopg"], "procrastinate": ["procrastinate"],
         "celery": ["celery"], "dbos": ["dbos", "psycopg"]}


def install_peers() -> dict[str, str]:
    """Create the peers' venv and install the pinned requirements; {distribution: error}."""
    if not PEERS_PY.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(PEERS_VENV)],
                       check=True, timeout=300)
        subprocess.run([str(PEERS_PY), "-m", "ensurepip", "--upgrade"], check=True,
                       timeout=300, stdout=subprocess.DEVNULL)
    pip = [str(PEERS_PY), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    whole = subprocess.run([*pip, "-r", str(REQUIREMENTS)], capture_output=True, text=True,
                           timeout=1800)
    if whole.returncode == 0:
        return {}
    errors: dict[str, str] = {}
    for line in REQUIREMENTS.read_text().splitlines():
        req = line.split("#", 1)[0].strip()
        if not req:
            continue
        one = subprocess.run([*pip, req], capture_output=True, text=True, timeout=1800)
        if one.returncode != 0:
            name = req.split("[")[0].split("=")[0].strip().lower()
            errors[name] = (one.stderr.strip().splitlines() or ["pip failed"])[-1]
    return errors


def failed_results(system: str, reason: str) -> None:
    res = c.Results(system, "bench/run_all.py", c.now_iso())
    res.fail("postgres" if system != "celery" else "redis", "all", reason)
    res.save()


def run(system: str, argv: list[str], timeout: float) -> None:
    print(f"== {system}: {' '.join(argv)}", flush=True)
    t0 = time.monotonic()
    path = c.RESULTS_DIR / f"{system}.json"
    path.unlink(missing_ok=True)
    try:
        proc = subprocess.run(argv, cwd=c.ROOT, timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = -1
    print(f"== {system}: exit {code} after {time.monotonic() - t0:.0f} s", flush=True)
    if not path.exists():
        failed_results(system, f"the benchmark exited with {code} before writing results")
    elif code != 0:
        res = c.Results.load(path)
        res.fail("-", "run", f"the benchmark exited with {code} (timeout: {timeout:.0f} s)"
                 if code == -1 else f"the benchmark exited with {code}")
        res.save(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="small sizes, one repetition: a smoke run")
    p.add_argument("--only", default=",".join(SYSTEMS), help="comma list of systems")
    p.add_argument("--src", default="worktree", help="outlast to measure (see outlast_bench.py)")
    p.add_argument("--no-install", action="store_true", help="use bench/.peers-venv as it is")
    p.add_argument("--n-fanout", action="store_true", help="outlast fan-out of 50,000")
    args = p.parse_args()
    only = [s for s in args.only.split(",") if s]
    reps = ["--reps", "1" if args.quick else str(args.reps)]
    small = args.quick

    if "outlast" in only:
        argv = [sys.executable, str(c.BENCH / "outlast_bench.py"), "--no-report",
                "--src", args.src, *reps]
        if small:
            argv += ["--n", "1000", "--n-single", "200", "--samples", "30", "--n-steps", "300",
                     "--m", "500", "--n-timers", "500", "--kills", "2"]
        if args.n_fanout:
            argv.append("--n-fanout")
        run("outlast", argv, 7200)

    peers = [s for s in only if s != "outlast"]
    if peers:
        errors: dict[str, str] = {}
        if not args.no_install:
            try:
                errors = install_peers()
            except (OSError, subprocess.SubprocessError) as exc:
                errors = {d: f"venv or pip failed: {exc}" for ds in NEEDS.values() for d in ds}
        # Sizes per peer: the slow ones drain fewer jobs (the note beside each figure says N).
        sizes = {
            "pgqueuer": ["--n", "10000", "--n-single", "2000", "--samples", "200"],
            "procrastinate": ["--n", "5000", "--n-single", "2000", "--samples", "200"],
            "celery": ["--n", "10000", "--n-single", "2000", "--samples", "200"],
            "dbos": ["--n", "2000", "--n-single", "1000", "--n-steps", "500",
                     "--samples", "40"],
        }
        if small:
            tiny = ["--n", "300", "--n-single", "100", "--samples", "10"]
            sizes = {"pgqueuer": [*tiny, "--kills", "1"], "procrastinate": tiny,
                     "celery": tiny, "dbos": [*tiny, "--n-steps", "100"]}
        for peer in peers:
            broken = [d for d in NEEDS.get(peer, []) if d in errors]
            if broken:
                failed_results(peer, "install failed: " + "; ".join(
                    f"{d}: {errors[d]}" for d in broken))
                continue
            script = c.BENCH / "peers" / f"{peer}_bench.py"
            run(peer, [str(PEERS_PY), str(script), *reps, *sizes.get(peer, [])], 3600)

    print(f"wrote {_report.write()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
