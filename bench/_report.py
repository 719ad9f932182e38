"""Render bench/RESULTS.md from every bench/results/*.json (stdlib only)."""

from __future__ import annotations

import sys
from pathlib import Path

import _common as c

DASH, TIMES = "\u2013", "\u00d7"  # en dash, multiplication sign

HIST = "History (alternating an empty database and one with history)"
BYTES = "Bytes per finished no-op run (PostgreSQL, after VACUUM)"
_SOAK = "Many processes (PostgreSQL soak: correctness, not speed)"

# workload key -> (section, title). Order here is the order in the report.
WORKLOADS: dict[str, tuple[str, str]] = {
    "enqueue_single": ("Enqueue", "enqueue one by one"),
    "enqueue_bulk": ("Enqueue", "enqueue in bulk"),
    "drain_cdefault": ("Drain no-op jobs (one worker process)", "default concurrency"),
    "drain_c10": ("Drain no-op jobs (one worker process)", "concurrency 10"),
    "drain_c100": ("Drain no-op jobs (one worker process)", "concurrency 100"),
    "latency_start_p50": ("Latency at idle", "trigger→start p50"),
    "latency_start_p95": ("Latency at idle", "trigger→start p95"),
    "latency_start_p99": ("Latency at idle", "trigger→start p99"),
    "latency_done_p50": ("Latency at idle", "trigger→done p50"),
    "latency_done_p95": ("Latency at idle", "trigger→done p95"),
    "latency_done_p99": ("Latency at idle", "trigger→done p99"),
    "steps_runs_c10": ("Durable 3-step runs", "runs/s, concurrency 10"),
    "steps_steps_c10": ("Durable 3-step runs", "steps/s, concurrency 10"),
    "steps_runs_c100": ("Durable 3-step runs", "runs/s, concurrency 100"),
    "steps_steps_c100": ("Durable 3-step runs", "steps/s, concurrency 100"),
    "steps_runs_cdefault": ("Durable 3-step runs", "runs/s, default concurrency"),
    "steps_steps_cdefault": ("Durable 3-step runs", "steps/s, default concurrency"),
    "rss_cdefault": ("Worker peak RSS while draining", "default concurrency"),
    "rss_c10": ("Worker peak RSS while draining", "concurrency 10"),
    "rss_c100": ("Worker peak RSS while draining", "concurrency 100"),
    "fanout_rate": ("Fan-out (queue limit 10, 20 ms children)", "children/s"),
    "fanout_pct": ("Fan-out (queue limit 10, 20 ms children)", "of ideal 500/s"),
    "fanout_parent_s": ("Fan-out (queue limit 10, 20 ms children)", "parent trigger→done"),
    "timers_park_rate": ("Timers due at once", "parking rate"),
    "timers_all_s": ("Timers due at once", "due→all completed"),
    "timers_p50_s": ("Timers due at once", "due→median completed"),
    "recovery_s": ("Recovery after SIGKILL", "kill→re-claim p50"),
    # bench/history_bench.py
    "history_drain_empty": (HIST, "drain of no-op runs, empty database"),
    "history_drain_full": (HIST, "drain of no-op runs, with history"),
    "history_drain_ratio": (HIST, "drain: with history / empty, per pair"),
    "history_ratio": (HIST, "drain: with history / empty, per pair (the sitting of history.json)"),
    "history_steps_empty": (HIST, "3-step runs, empty database"),
    "history_steps_full": (HIST, "3-step runs, with history"),
    "history_steps_ratio": (HIST, "3-step runs: with history / empty, per pair"),
    "history_start_p50_empty": (HIST, "trigger→start p50, empty database"),
    "history_start_p50_full": (HIST, "trigger→start p50, with history"),
    "history_start_p50_ratio": (HIST, "trigger→start p50: empty / with history, per pair"),
    "history_bytes_per_run": (HIST, "bytes per finished run of the history"),
    "bytes_per_noop_run": (BYTES, "every table and index"),
    "bytes_runs": (BYTES, "table runs (heap and TOAST)"),
    "bytes_runs_pkey": (BYTES, "index runs_pkey (id)"),
    "bytes_runs_env_id": (BYTES, "index runs_env_id (env, id)"),
    "bytes_runs_env_task": (BYTES, "index runs_env_task (env, task_id, id)"),
    "bytes_runs_env_idp": (BYTES, "index runs_env_idp (env, substr(id, 5, 12))"),
    "bytes_runs_env_task_idp": (BYTES, "index runs_env_task_idp (env, task_id, substr(id, 5, 12))"),
    "bytes_runs_env_status": (BYTES, "index runs_env_status (env, status, id)"),
    "bytes_runs_finished": (BYTES, "index runs_finished (finished_at, id), usage's"),
    "prune_rate": ("Pruning (PostgreSQL)", "prune rate"),
    "prune_start_quiet_p50": ("Pruning (PostgreSQL)", "trigger→start p50, no prune"),
    "prune_start_quiet_p99": ("Pruning (PostgreSQL)", "trigger→start p99, no prune"),
    "prune_start_pruning_p50": ("Pruning (PostgreSQL)", "trigger→start p50, during a prune"),
    "prune_start_pruning_p99": ("Pruning (PostgreSQL)", "trigger→start p99, during a prune"),
    "wal_bytes_noop": ("Writes and WAL per run (PostgreSQL)", "WAL bytes per no-op run"),
    "wal_records_noop": ("Writes and WAL per run (PostgreSQL)", "WAL records per no-op run"),
    "rows_written_noop": ("Writes and WAL per run (PostgreSQL)", "rows written per no-op run"),
    "wal_bytes_steps": ("Writes and WAL per run (PostgreSQL)", "WAL bytes per 3-step run"),
    "wal_records_steps": ("Writes and WAL per run (PostgreSQL)", "WAL records per 3-step run"),
    "rows_written_steps": ("Writes and WAL per run (PostgreSQL)", "rows written per 3-step run"),
    # bench/http_bench.py
    "http_trigger_rate": ("HTTP triggers (8 clients, one run per request)", "triggers/s"),
    "http_trigger_p50": ("HTTP triggers (8 clients, one run per request)", "latency p50"),
    "http_trigger_p99": ("HTTP triggers (8 clients, one run per request)", "latency p99"),
    "http_ratio_noop": ("HTTP triggers (8 clients, one run per request)",
                        "outlast / bare FastAPI no-op, per alternating repetition"),
    "http_ratio_insert": ("HTTP triggers (8 clients, one run per request)",
                          "outlast / bare FastAPI one-INSERT, per alternating repetition"),
    # bench/soak_many.py
    "soak_runs_per_s": (_SOAK, "runs/s, first start to last finish"),
    "soak_wall_s": (_SOAK, "wall time"),
    "soak_max_executing_soak_limited": (_SOAK, "most runs EXECUTING seen in soak-limited"),
    "soak_max_executing_soak_narrow": (_SOAK, "most runs EXECUTING seen in soak-narrow"),
    "soak_repeats_across_kill": (_SOAK, "step bodies repeated across a kill"),
    "soak_violations": (_SOAK, "violations (runs not completed, repeats, limits)"),
}

# A line under a section's heading
SECTION_NOTES = {
    "Latency at idle": "outlast's trigger→start is measured as Celery's is since issue 18 "
                       "(the trigger call to the task body's first line, wall clock); "
                       "figures from before that are the runs' created_at→started_at. "
                       "outlast against Celery in one sitting: `bench/latency_bench.py`, "
                       "[bench/README.md](README.md#start-latency).",
}

INTRO = f"""\
# Benchmarks

Generated by `bench/run_all.py` (all systems) or `bench/outlast_bench.py` (outlast alone)
from `bench/results/*.json`; do not edit by hand. Each cell is the **median** of the
repetitions with the **min{DASH}max** range and the repetition count; each repetition ran on a
fresh database. Ratios compare medians measured in the same `run_all.py` run (see the start
times below). Benchmarks, not tests: nothing here asserts a threshold.

How figures are taken: throughput is counted from the first job's start to the last job's
completion (from the systems' own timestamps where they keep them), so process start-up
is excluded; latencies are trigger→start and trigger→done at idle with one worker
running, one job at a time; peak RSS is the worker's `VmHWM` from `/proc` (summed over its
child processes for Celery's prefork pool). Other sessions' test runs share the machine
(load averages from about 0.4 to 3 on 2 cores during recorded runs), and figures moved by
2-3{TIMES} between a quiet and a loaded run; compare within one run. See bench/README.md
for the method.
"""


def fmt(v: float | None) -> str:
    if v is None:
        return DASH
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def cell(m: c.Metric) -> str:
    if not m.values:
        return DASH
    lo, hi = min(m.values), max(m.values)
    spread = f" ({fmt(lo)}{DASH}{fmt(hi)})" if len(m.values) > 1 else ""
    return f"**{fmt(m.median)}**{spread} {TIMES}{len(m.values)}"


def label(system: str, backend: str) -> str:
    return f"{system} / {backend}"


def load_all(directory: Path = c.RESULTS_DIR) -> list[c.Results]:
    order = {"outlast": 0, "pgqueuer": 1, "procrastinate": 2, "celery": 3, "dbos": 4}
    found = [c.Results.load(p) for p in sorted(directory.glob("*.json"))]
    return sorted(found, key=lambda r: (order.get(r.system, 9), r.system))


def render(results: list[c.Results]) -> str:
    out = [INTRO]
    machine = c.machine()
    out.append("## Machine and versions\n")
    out.append(f"- Machine: {machine['nproc']} cores ({machine['cpu']}), {machine['memory']} "
               f"memory, Linux {machine['kernel']}; shared and noisy, so read ranges, not "
               "single figures.")
    for r in results:
        vers = ", ".join(f"{k} {v}" for k, v in r.versions.items())
        out.append(f"- **{r.system}** ({vers}), started {r.started}: `{r.command}`")
        for k, v in r.settings.items():
            out.append(f"  - {k}: {v}")
    out.append("")

    columns: list[tuple[str, str]] = []
    metrics: dict[tuple[str, str, str], c.Metric] = {}
    for r in results:
        for m in r.metrics:
            key = (m.system, m.backend)
            if key not in columns:
                columns.append(key)
            metrics[(m.system, m.backend, m.workload)] = m
    out.extend(targets(metrics))
    section = None
    for workload, (sec, title) in WORKLOADS.items():
        cols = [col for col in columns if (*col, workload) in metrics]
        if not cols:
            continue
        if sec != section:
            section = sec
            out.append(f"## {sec}\n")
            if sec in SECTION_NOTES:
                out.append(SECTION_NOTES[sec] + "\n")
        first = metrics[(*cols[0], workload)]
        better = "higher is better" if first.higher_is_better else "lower is better"
        out.append(f"**{title}** ({first.unit}, {better})\n")
        out.append(f"| system / backend | median (min{DASH}max) {TIMES}reps | notes |")
        out.append("|---|---|---|")
        for col in cols:
            m = metrics[(*col, workload)]
            out.append(f"| {label(*col)} | {cell(m)} | {m.note} |")
        out.append("")

    out.extend(ratios(results, metrics))
    failures = [f for r in results for f in r.failures]
    out.append("## Failures and gaps\n")
    if not failures:
        out.append("None recorded.\n")
    for f in failures:
        out.append(f"- **{f.system} / {f.backend} / {f.workload}**: {f.reason}")
    out.append("")
    unknown = sorted({m.workload for r in results for m in r.metrics} - set(WORKLOADS))
    if unknown:
        out.append(f"Unlisted figures present in results: {', '.join(unknown)}\n")
    return "\n".join(out).rstrip() + "\n"


NOT_MEASURED = "not measured"
Metrics = dict[tuple[str, str, str], c.Metric]


def targets(metrics: Metrics) -> list[str]:
    """Issue 8's targets: met or not in these results, with the figures and the ratio."""

    def med(system: str, backend: str, workload: str) -> float | None:
        m = metrics.get((system, backend, workload))
        return m.median if m is not None and m.values else None

    def fig(system: str, backend: str, workload: str, what: str) -> str:
        v = med(system, backend, workload)
        unit = metrics[(system, backend, workload)].unit if v is not None else ""
        who = backend if system == "outlast" else label(system, backend)
        head = f"{who}, {what} (`{workload}`)"
        return f"{head}: {fmt(v)} {unit}" if v is not None else f"{head}: {NOT_MEASURED}"

    def best(system: str, backend: str, workloads: list[str]) -> str:
        """The workload of ``workloads`` with the highest median (the first if none)."""
        found = [w for w in workloads if med(system, backend, w) is not None]
        return max(found, key=lambda w: med(system, backend, w) or 0.0) if found else workloads[0]

    def title(workload: str) -> str:
        return WORKLOADS.get(workload, ("", workload))[1]

    rows: list[str] = []

    def ratio(target: str, backend: str, workload: str, peer: str, peer_backend: str,
              peer_workload: str, need: float, why: str = "") -> None:
        mine, theirs = med("outlast", backend, workload), med(peer, peer_backend, peer_workload)
        compared = fig(peer, peer_backend, peer_workload, title(peer_workload)) + why
        if mine is None or theirs is None or not theirs:
            value, met = NOT_MEASURED, DASH
        else:
            r = mine / theirs
            value, met = f"{r:.3g}{TIMES} (needs ≥ {need:g}{TIMES})", "✔" if r >= need else "✘"
        rows.append(f"| {target} | {fig('outlast', backend, workload, title(workload))} | "
                    f"{compared} | {value} | {met} |")

    def absolute(target: str, backend: str, workload: str, sign: str, limit: float,
                 unit: str) -> None:
        mine = med("outlast", backend, workload)
        if mine is None:
            value, met = NOT_MEASURED, DASH
        else:
            ok = {"<": mine < limit, "≤": mine <= limit, "≥": mine >= limit}[sign]
            value, met = f"{fmt(mine)} {unit}", "✔" if ok else "✘"
        rows.append(f"| {target} | {fig('outlast', backend, workload, title(workload))} | "
                    f"absolute: {sign} {limit:g} {unit} | {value} | {met} |")

    # 1. drain: like for like at concurrency 10, then against PgQueuer's own default
    ratio(f"1. drain of no-op runs ≥ 2{TIMES} PgQueuer", "postgres", "drain_c10",
          "pgqueuer", "postgres", "drain_c10", 2)
    ratio("1. (against PgQueuer's own default)", "postgres", "drain_c10",
          "pgqueuer", "postgres", "drain_cdefault", 2)
    # 2. SQLite drain against the better of PgQueuer's two PostgreSQL drain figures
    pgq = best("pgqueuer", "postgres", ["drain_cdefault", "drain_c10"])
    ratio("2. SQLite drain ≥ PgQueuer's PostgreSQL drain", "sqlite", "drain_c10",
          "pgqueuer", "postgres", pgq, 1, "; the better of PgQueuer's two drain figures")
    # 3. durable 3-step runs against DBOS's best of its default and concurrency-10 figures
    for b in ("postgres", "sqlite"):
        dbos = best("dbos", b, ["steps_runs_cdefault", "steps_runs_c10"])
        ratio(f"3. durable 3-step runs ≥ 5{TIMES} DBOS ({b})", b, "steps_runs_c10", "dbos", b, dbos,
              5, "; the better of DBOS's default and concurrency-10 figures")
    ratio("4. bulk trigger ≥ PgQueuer's bulk enqueue", "postgres", "enqueue_bulk",
          "pgqueuer", "postgres", "enqueue_bulk", 1)
    for b in ("postgres", "sqlite"):
        ratio(f"5. one-by-one trigger ≥ 2{TIMES} Celery ({b})", b, "enqueue_single",
              "celery", "redis", "enqueue_single", 2)
    absolute("6. trigger→start p50 ≤ 2 ms (postgres)", "postgres", "latency_start_p50",
             "≤", 2, "ms")
    absolute("6. trigger→start p50 ≤ 5 ms (sqlite)", "sqlite", "latency_start_p50",
             "≤", 5, "ms")
    for b in ("postgres", "sqlite"):
        absolute(f"7. fan-out ≥ 95% of ideal ({b})", b, "fanout_pct", "≥", 95, "% of ideal")
    for b in ("postgres", "sqlite"):
        absolute(f"8. recovery after SIGKILL p50 < 1 s ({b})", b, "recovery_s", "<", 1, "s")

    return ["## Targets (issue 8)\n",
            "The targets of issue 8 for this machine, as ratios of the medians below (or as "
            "absolute figures where a target is one). A peer's figures come from its last "
            "recorded run: the ratios hold for one run only when the start times above "
            "belong to one `run_all.py` run. **✔** met, **✘** missed, "
            f"{DASH} not measured.\n",
            "| target | outlast | compared with | ratio or value | met |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "Why a target is missed, and the limit: [bench/README.md](README.md#limits)",
            ""]


# peer workload -> the outlast workload it is compared with
COMPARABLE = {
    "drain_cdefault": "drain_c10",
    "rss_cdefault": "rss_c10",
    "steps_runs_cdefault": "steps_runs_c10",
    "steps_steps_cdefault": "steps_steps_c10",
}


def ratios(results: list[c.Results], metrics: dict[tuple[str, str, str], c.Metric]
           ) -> list[str]:
    # http.json holds outlast and its ceiling, compared in its own section.
    peers = [r for r in results if r.system not in ("outlast", "http")]
    if not peers or not any(r.system == "outlast" for r in results):
        return []
    out = ["## outlast / peer ratios\n",
           "outlast's median divided by the peer's, on the same backend (PostgreSQL for the "
           "PostgreSQL peers; Celery on Redis is compared with outlast on both backends). "
           "**✔** marks where outlast is ahead (higher throughput, lower latency, memory or "
           "recovery time).\n",
           "| workload | peer | outlast backend | outlast | peer | outlast/peer | |",
           "|---|---|---|---|---|---|---|"]
    for peer in peers:
        for pm in peer.metrics:
            mine = COMPARABLE.get(pm.workload, pm.workload)
            backends = [pm.backend] if pm.backend in ("sqlite", "postgres") else [
                "sqlite", "postgres"]
            for b in backends:
                om = metrics.get(("outlast", b, mine))
                if om is None or not om.values or not pm.values or not pm.median:
                    continue
                ratio = (om.median or 0) / pm.median
                ahead = ratio > 1 if pm.higher_is_better else ratio < 1
                title = WORKLOADS.get(pm.workload, ("", pm.workload))
                out.append(
                    f"| {title[0]}: {title[1]} | {peer.system} / {pm.backend} | {b} "
                    f"({mine}) | {fmt(om.median)} | {fmt(pm.median)} | {ratio:.3g}{TIMES} | "
                    f"{'✔' if ahead else ''} |")
    out.append("")
    return out


def write(path: Path = c.BENCH / "RESULTS.md") -> Path:
    path.write_text(render(load_all()))
    return path


if __name__ == "__main__":
    print(write(Path(sys.argv[1]) if len(sys.argv) > 1 else c.BENCH / "RESULTS.md"))
