"""Helpers shared by every benchmark script (stdlib only: the peers' venv imports it too).

Statistics, fresh PostgreSQL databases, process memory, polling with a deadline, and the
result records that ``_report.py`` renders into RESULTS.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS_DIR = BENCH / "results"
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


# -- results ------------------------------------------------------------------------------------


@dataclass
class Metric:
    """One figure of one system on one backend, measured ``len(values)`` times."""

    system: str
    backend: str
    workload: str  # a key of _report.WORKLOADS
    unit: str
    values: list[float] = field(default_factory=list)
    note: str = ""
    higher_is_better: bool = True

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


@dataclass
class Failure:
    system: str
    backend: str
    workload: str
    reason: str


@dataclass
class Results:
    system: str
    command: str
    started: str
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def add(self, metric: Metric) -> Metric:
        for m in self.metrics:
            if (m.system, m.backend, m.workload) == (metric.system, metric.backend,
                                                     metric.workload):
                return m
        self.metrics.append(metric)
        return metric

    def record(self, backend: str, workload: str, unit: str, value: float, *,
               note: str = "", higher_is_better: bool = True) -> None:
        m = self.add(Metric(self.system, backend, workload, unit, note=note,
                            higher_is_better=higher_is_better))
        m.values.append(value)
        if note:
            m.note = note
        print(f"  {self.system}/{backend} {workload}: {value:,.3f} {unit}", flush=True)

    def fail(self, backend: str, workload: str, reason: str) -> None:
        self.failures.append(Failure(self.system, backend, workload, reason))
        print(f"  {self.system}/{backend} {workload}: FAILED: {reason}", flush=True)

    def save(self, path: Path | None = None) -> Path:
        path = path or RESULTS_DIR / f"{self.system}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Results:
        raw = json.loads(path.read_text())
        raw["metrics"] = [Metric(**m) for m in raw.get("metrics", [])]
        raw["failures"] = [Failure(**f) for f in raw.get("failures", [])]
        return cls(**raw)


def now_iso() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


# -- statistics ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); enough for 200 samples."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


# -- waiting ------------------------------------------------------------------------------------


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.05,
               what: str = "condition") -> None:
    """Poll ``check`` until true; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout:.0f} s")


# -- PostgreSQL ---------------------------------------------------------------------------------


def pg_url(dbname: str, base: str = PG_ADMIN_URL) -> str:
    head, _, _ = base.rpartition("/")
    return f"{head}/{dbname}"


@contextlib.contextmanager
def fresh_pg_database(prefix: str) -> Iterator[str]:
    """CREATE DATABASE for one benchmark repetition; dropped (forced) afterwards."""
    import psycopg  # both venvs have psycopg 3

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield pg_url(name)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def fresh_database(backend: str, prefix: str) -> Iterator[str]:
    """An empty database for one repetition: a SQLite file in a temp directory, or a
    PostgreSQL database (fresh_pg_database); both gone afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix=f"{prefix}-") as tmp:
            yield f"sqlite:///{tmp}/{prefix}.db"
    else:
        with fresh_pg_database(prefix) as url:
            yield url


def pg_settings() -> dict[str, str]:
    import psycopg

    out: dict[str, str] = {}
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT version()").fetchone()
        out["version"] = str(row[0]).split(" on ")[0].removeprefix("PostgreSQL ") if row else "?"
        for name in ("synchronous_commit", "fsync", "wal_sync_method", "full_page_writes",
                     "shared_buffers", "max_connections"):
            r = conn.execute(f"SHOW {name}").fetchone()
            out[name] = str(r[0]) if r else "?"
    return out


# -- processes ----------------------------------------------------------------------------------


def proc_status_kb(pid: int, key: str) -> int | None:
    """A field of /proc/<pid>/status in kB (VmHWM = peak RSS, VmRSS = current)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def descendants(pid: int) -> list[int]:
    """Child processes (recursively), from /proc/<pid>/task/*/children."""
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 1000:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(x) for x in (task / "children").read_text().split()]
                found.extend(kids)
                todo.extend(kids)
    return found


def tree_peak_rss_mb(pid: int) -> float:
    """Peak RSS of a process plus its children (each one's VmHWM, summed), in MiB."""
    total = 0
    for p in [pid, *descendants(pid)]:
        total += proc_status_kb(p, "VmHWM") or 0
    return total / 1024


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def machine() -> dict[str, str]:
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "memory": mem,
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# -- which outlast is measured ------------------------------------------------------------------


def outlast_source(rev: str) -> tuple[Path, str]:
    """A directory holding the ``outlast`` package to measure, and a description of it.

    ``worktree`` measures the checkout as it is (uncommitted edits included); any git
    revision (``HEAD``, a commit) is exported read-only with ``git archive`` into a temp
    directory, so edits in progress elsewhere in the tree cannot change a run midway."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=60).stdout.strip()

    if rev == "worktree":
        try:
            return ROOT, f"work tree at {git('describe', '--always', '--dirty')}"
        except (OSError, subprocess.SubprocessError):
            return ROOT, "work tree"
    sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    dest = Path(os.environ.get("TMPDIR", "/tmp")) / f"outlast-bench-src-{sha[:12]}"
    if not (dest / "outlast" / "__init__.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha, "outlast"], cwd=ROOT,
                                 capture_output=True, check=True, timeout=60).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=60)
    return dest, f"commit {sha[:12]} ({rev})"


def source_from_argv(argv: Sequence[str]) -> str:
    """The value of ``--src`` in ``argv`` (read before argparse: it decides imports)."""
    for i, a in enumerate(argv):
        if a == "--src" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--src="):
            return a.split("=", 1)[1]
    return "worktree"
