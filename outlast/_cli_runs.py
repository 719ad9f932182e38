"""``outlast trigger``, ``runs``, ``tokens`` and ``queues``: runs and what they wait on."""

from __future__ import annotations

import argparse
import json
from typing import Any

from . import _cli_versions, _serde
from ._cli_common import _app_flag, _client, _common, _out, _setup, _when, load_app
from ._cli_format import attempt_lines, fit, result_text, run_error_lines
from ._debounce import Debounce


def cmd_trigger(args: argparse.Namespace) -> int:
    _setup(args)
    if args.app:
        load_app(args.app)
    client = _client(args)
    payload = json.loads(args.payload) if args.payload else None
    handle = client.trigger(
        args.task,
        payload,
        idempotency_key=args.idempotency_key,
        delay=args.delay,
        ttl=args.ttl,
        tags=args.tag or (),
        priority=args.priority or 0.0,
        concurrency_key=args.concurrency_key,
        debounce=_debounce(args),
    )
    if not args.wait:
        _out(args, {"id": handle.id, "is_cached": handle.is_cached}, handle.id)
        return 0
    from ._cli_progress import watch_run  # live status, step and progress on stderr

    run = watch_run(client, handle.id, timeout=args.timeout, journal=client.store.journal)
    _out(args, run.to_dict(), f"{run.id} {run.status}\n{result_text(run)}")
    return 0 if str(run.status) == "COMPLETED" else 1


def _debounce(args: argparse.Namespace) -> Debounce | None:
    if args.debounce is None:
        return None
    return Debounce(args.debounce, delay=args.debounce_delay, max_delay=args.debounce_max_delay,
                    mode=args.debounce_mode)


def cmd_runs(args: argparse.Namespace) -> int:
    _setup(args)
    if args.runs_cmd == "migrate":
        return _cli_versions.cmd_runs_migrate(args)
    client = _client(args)
    if args.runs_cmd == "list":
        runs = client.list_runs(
            status=[s.upper() for s in args.status] if args.status else None,
            task_id=args.task,
            tag=args.tag,
            limit=args.limit,
        )
        if args.json:
            print(json.dumps([r.to_dict() for r in runs], default=str, indent=2))
            return 0
        print(f"{'ID':32} {'TASK':24} {'STATUS':10} {'ATT':>3} {'CREATED':19} {'DURATION':>9}")
        for r in runs:
            dur = f"{r.duration:.2f}s" if r.duration is not None else "-"
            print(f"{r.id:32} {r.task_id[:24]:24} {r.status!s:10} {r.attempt:>3} "
                  f"{_when(r.created_at):19} {dur:>9}")
        return 0
    if args.runs_cmd == "show":
        return _show_run(args, client)
    if args.runs_cmd == "cancel":
        run = client.cancel(args.run_id)
        _out(args, run.to_dict(), f"{run.id} {run.status}"
             + (" (cancel requested)" if run.cancel_requested and not run.is_final else ""))
        return 0
    if args.runs_cmd == "replay":
        from .client import _MISSING

        payload = json.loads(args.payload) if args.payload else _MISSING
        handle = client.replay(args.run_id, payload)
        _out(args, {"id": handle.id, "replayed_from": args.run_id}, handle.id)
        return 0
    raise AssertionError(args.runs_cmd)


def _show_run(args: argparse.Namespace, client: Any) -> int:
    from .explain import why

    run = client.retrieve(args.run_id)
    journal = client.store.journal(run.id)
    events = client.store.events(run.id)
    explanation = why(client.store, run)
    if args.json:
        data = run.to_dict()
        data["why"] = explanation
        data["journal"] = [j.__dict__ for j in journal]
        data["events"] = [e.__dict__ for e in events]
        print(json.dumps(data, default=str, indent=2))
        return 0
    print(f"run       {run.id}\ntask      {run.task_id}  (queue {run.queue})")
    print(f"status    {run.status}  attempt {run.attempt}/{run.max_attempts}")
    print(f"why       {explanation}")
    print(f"version   {run.version or '(not locked yet)'}")
    print(f"created   {_when(run.created_at)}  started {_when(run.started_at)}  "
          f"finished {_when(run.finished_at)}")
    if run.tags:
        print(f"tags      {', '.join(run.tags)}")
    if run.parent_id:
        print(f"parent    {run.parent_id}")
    if run.replayed_from:
        print(f"replay of {run.replayed_from}")
    print(f"payload   {json.dumps(run.payload)}")
    if run.metadata:
        print(f"metadata  {json.dumps(run.metadata)}")
    if run.output is not None:
        print(f"output    {json.dumps(run.output)}")
    tried = attempt_lines(run, journal, events)
    for line in run_error_lines(run) + (["attempts", *tried] if tried else []):
        print(line)
    if journal:
        print("steps")
        for j in journal:
            took = f"{(j.finished_at - j.started_at):.3f}s" if j.finished_at else "…"
            print(f"  {fit(j.key, 32)} {j.kind:12} {j.status:8} attempt {j.attempt} {took}")
    if events:
        print("events")
        for e in events:
            print(f"  {_when(e.ts)} {e.kind:15} {e.level or '':7} {e.message or ''}")
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    _setup(args)
    client = _client(args)
    if args.tokens_cmd == "complete":
        data = json.loads(args.data) if args.data else None
        wp, done = client.store.complete_waitpoint(args.env, args.token_id,
                                                   _serde.to_json(data))
        _out(args, wp.__dict__, f"{wp.id} {wp.status}" if done else
             f"{wp.id} was already {wp.status}: nothing changed (the first completion wins)")
    elif args.tokens_cmd == "create":
        token = client.create_token(args.timeout)
        _out(args, token.__dict__, f"{token.id}\n{token.callback_url}")
    else:
        for wp in client.list_tokens(status=args.status):
            print(f"{wp.id:40} {wp.status:10} waiting runs: {', '.join(wp.waiting_runs) or '-'}")
    return 0


def cmd_queues(args: argparse.Namespace) -> int:
    _setup(args)
    client = _client(args)
    if args.queues_cmd == "list":
        queues = client.list_queues()
        if args.json:
            print(json.dumps(queues, default=str, indent=2))
            return 0
        print(f"{'QUEUE':32} {'QUEUED':>7} {'EXEC':>5} {'LIMIT':>6} {'RATE':>10} PAUSED")
        for q in queues:
            rate = (f"{q['rate_limit_count']}/{q['rate_limit_period']:g}s"
                    if q["rate_limit_count"] else "-")
            limit = q["concurrency_limit"] if q["concurrency_limit"] is not None else "-"
            print(f"{q['name']:32} {q['queued']:>7} {q['executing']:>5} {limit!s:>6} "
                  f"{rate:>10} {'yes' if q['paused'] else 'no'}")
        return 0
    if args.queues_cmd == "pause":
        q = client.pause_queue(args.name)
    elif args.queues_cmd == "resume":
        q = client.resume_queue(args.name)
    else:
        limit = None if args.limit in ("none", "off") else int(args.limit)
        q = client.set_queue_limit(args.name, limit)
    print(f"{q['name']}: paused={bool(q['paused'])} limit={q['concurrency_limit']}")
    return 0


def _add_trigger(sub: Any) -> None:
    p = sub.add_parser("trigger", help="start a run")
    _common(p)
    _app_flag(p)
    p.add_argument("task", help="task id")
    p.add_argument("--payload", help="JSON payload")
    p.add_argument("--wait", action="store_true", help="wait for the run to end")
    p.add_argument("--timeout", type=float, default=None, help="with --wait: give up after")
    p.add_argument("--idempotency-key")
    p.add_argument("--delay", type=float, help="seconds before the run may start")
    p.add_argument("--ttl", type=float, help="expire if not started within seconds")
    p.add_argument("--tag", action="append", help="tag (repeatable)")
    p.add_argument("--priority", type=float, help="head start in seconds")
    p.add_argument("--concurrency-key")
    p.add_argument("--debounce", metavar="KEY",
                   help="triggers with this key before the run starts make one run")
    p.add_argument("--debounce-delay", type=float, default=5.0,
                   help="with --debounce: quiet seconds before it starts (default 5)")
    p.add_argument("--debounce-max-delay", type=float,
                   help="with --debounce: the longest a burst delays it, seconds")
    p.add_argument("--debounce-mode", choices=("trailing", "leading"), default="trailing",
                   help="with --debounce: keep the last payload or the first")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_trigger)


def _add_runs(sub: Any) -> None:
    p = sub.add_parser("runs", help="list, show, cancel, replay runs")
    rs = p.add_subparsers(dest="runs_cmd", required=True)
    q = rs.add_parser("list")
    _common(q)
    q.add_argument("--status", action="append")
    q.add_argument("--task")
    q.add_argument("--tag")
    q.add_argument("--limit", type=int, default=20)
    q.add_argument("--json", action="store_true")
    for name in ("show", "cancel", "replay"):
        q = rs.add_parser(name)
        _common(q)
        q.add_argument("run_id")
        q.add_argument("--json", action="store_true")
        if name == "replay":
            q.add_argument("--payload", help="a new JSON payload")
    _cli_versions.add_runs_migrate(rs)
    p.set_defaults(fn=cmd_runs)
    from ._cli_bulk import add_runs_commands

    add_runs_commands(rs)


def _add_tokens(sub: Any) -> None:
    p = sub.add_parser("tokens", help="waitpoint tokens")
    ts = p.add_subparsers(dest="tokens_cmd", required=True)
    q = ts.add_parser("complete")
    _common(q)
    q.add_argument("token_id")
    q.add_argument("--data", help="JSON output for the waiting run")
    q.add_argument("--json", action="store_true")
    q = ts.add_parser("create")
    _common(q)
    q.add_argument("--timeout", type=float)
    q.add_argument("--json", action="store_true")
    q = ts.add_parser("list")
    _common(q)
    q.add_argument("--status")
    p.set_defaults(fn=cmd_tokens)


def _add_queues(sub: Any) -> None:
    p = sub.add_parser("queues", help="list, pause, resume queues, change limits")
    qs = p.add_subparsers(dest="queues_cmd", required=True)
    q = qs.add_parser("list")
    _common(q)
    q.add_argument("--json", action="store_true")
    for name in ("pause", "resume"):
        q = qs.add_parser(name)
        _common(q)
        q.add_argument("name")
    q = qs.add_parser("limit")
    _common(q)
    q.add_argument("name")
    q.add_argument("limit", help="a number, or 'none' to remove the limit")
    p.set_defaults(fn=cmd_queues)


def add_commands(sub: Any) -> None:
    _add_trigger(sub)
    _add_runs(sub)
    _add_tokens(sub)
    _add_queues(sub)
