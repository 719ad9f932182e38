"""The ``outlast`` command. Every flag has an OUTLAST_* environment twin, shown in --help."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import importlib
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import _cli_versions
from ._errors import OutlastError
from ._loop import loop_name
from ._loop import run as run_loop

log = logging.getLogger("outlast.cli")


# -- flags with environment twins -------------------------------------------------------------


def _flag(
    parser: argparse.ArgumentParser,
    name: str,
    *,
    help: str,
    default: Any = None,
    type: Callable[[str], Any] = str,
    action: str | None = None,
) -> None:
    env = "OUTLAST_" + name.lstrip("-").replace("-", "_").upper()
    raw = os.environ.get(env)
    if action == "store_true":
        value = raw.lower() in ("1", "true", "yes", "on") if raw else bool(default)
        parser.add_argument(name, action="store_true", default=value, help=f"{help} [env: {env}]")
        return
    value = type(raw) if raw not in (None, "") else default
    shown = f" (default: {default})" if default is not None else ""
    parser.add_argument(name, type=type, default=value, help=f"{help}{shown} [env: {env}]")


def _common(p: argparse.ArgumentParser) -> None:
    _flag(p, "--database-url", help="sqlite:///path.db or postgresql://…",
          default="sqlite:///.outlast/outlast.db")
    _flag(p, "--env", help="environment name", default="dev")


def _app_flag(p: argparse.ArgumentParser) -> None:
    _flag(p, "--app", help="task modules or files, comma separated "
          "(or [tool.outlast] app in pyproject.toml)")


# -- loading task code ------------------------------------------------------------------------


def app_modules(app: str | None) -> list[str]:
    if app:
        return [m.strip() for m in app.split(",") if m.strip()]
    pyproject = Path("pyproject.toml")
    if pyproject.exists():
        conf = tomllib.loads(pyproject.read_text()).get("tool", {}).get("outlast", {})
        value = conf.get("app", [])
        return [value] if isinstance(value, str) else list(value)
    return []


def load_app(app: str | None) -> list[str]:
    """Import the task modules; returns the files they came from (for reloads)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    files = []
    for name in app_modules(app):
        if name.endswith(".py") or os.sep in name:
            path = Path(name).resolve()
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                raise OutlastError(f"cannot load task file {name!r}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(name)
        if getattr(module, "__file__", None):
            files.append(str(module.__file__))
    return files


def _setup(args: argparse.Namespace) -> None:
    os.environ["OUTLAST_DATABASE_URL"] = args.database_url
    os.environ["OUTLAST_ENV"] = args.env


def _store(args: argparse.Namespace, *, migrate: bool = False) -> Any:
    from .store import open_store

    store = open_store(args.database_url)
    if migrate:
        store.migrate()
    else:
        store.check_schema()
    return store


def _client(args: argparse.Namespace) -> Any:
    from .client import Client

    return Client(store=_store(args), env=args.env)


# -- commands ---------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    store = _store(args, migrate=True)
    print(f"schema is at version {store.migrate()} ({store.safe_url})")
    return 0


def _run_worker(args: argparse.Namespace, *, dev: bool) -> int:
    from .worker import Worker

    # A SIGTERM before the loop's handler exists (the app importing, migrations running)
    # would end the process by the default action, exit -15; a deploy stopping a worker
    # that is still starting gets a clean stop instead, once start-up is done.
    early: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: early.append(signum))
    loop_name(args.loop)  # a bad --loop fails before anything is written
    _setup(args)
    store = _store(args, migrate=dev)
    load_app(args.app)
    from .tasks import REGISTRY

    if not REGISTRY:
        print("no tasks found: pass --app MODULE (or set [tool.outlast] app)", file=sys.stderr)
        return 2
    worker = Worker(
        store,
        env=args.env,
        concurrency=args.concurrency,
        prefetch=args.prefetch,
        lease_seconds=args.lease_seconds,
        scheduler=not args.no_scheduler,
        shutdown_grace=args.shutdown_grace,
        life_lock=not args.no_life_lock,
        version=args.version,
        drain=args.drain,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if early:
            stop.set()
        server = None
        if dev and not args.no_server:
            from .server import create_app

            if _is_loopback(args.host):
                # Only this machine can reach the dashboard: it opens without a login
                # (unless OUTLAST_DASHBOARD_PASSWORD is set or OPEN was set to 0).
                os.environ.setdefault("OUTLAST_DASHBOARD_OPEN", "1")
            server = _uvicorn_server(create_app(store), args.host, args.port)
            serving = asyncio.create_task(server.serve())
        if dev:
            secret = _dev_key(store, args.env)
            print(
                f"outlast dev: {len(REGISTRY)} tasks ({', '.join(sorted(REGISTRY))}) on "
                f"{store.safe_url}, env {args.env!r}\n"
                + (f"  API + dashboard: http://{args.host}:{args.port}/  "
                   f"(OpenAPI: /api/v1/openapi.json)\n"
                   f"  secret key:  export OUTLAST_SECRET_KEY={secret}\n"
                   if server is not None else "")
                + f"  trigger one:  outlast trigger {_example_task()} --payload '{{}}'\n"
                "  watch runs:   outlast runs list",
                flush=True,
            )
        await worker.run(stop)
        if server is not None:
            server.should_exit = True
            await serving

    # See run_loop: sync steps may linger, and a KeyboardInterrupt or SystemExit while runs
    # execute is task code's (SIGINT and SIGTERM are the loop's), not a reason to stop.
    run_loop(main(), args.loop, join_threads=False, contain=lambda: bool(worker.active))
    store.close()
    _exit_past_task_threads()
    return 0


def _exit_past_task_threads() -> None:
    """Exit at once if task code still runs in threads after the worker shut down.

    Such a thread is a sync task or step that outlived the grace period: its run was
    handed back and its result can no longer be committed (C4). Waiting for it, as
    interpreter exit would, only stalls the deploy while the body runs on here and on
    the worker that took the run over."""
    others = [t for t in threading.enumerate() if t is not threading.current_thread()]
    deadline = time.monotonic() + 0.5
    for t in others:
        if not t.daemon:
            t.join(max(0.0, deadline - time.monotonic()))  # idle executor threads leave
    lingering = [t for t in others if not t.daemon and t.is_alive()]
    if lingering:
        log.warning("exiting with %d task threads still running; their runs were handed "
                    "back", len(lingering))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_worker(args: argparse.Namespace) -> int:
    return _run_worker(args, dev=False)


def _uvicorn_server(app: Any, host: str, port: int) -> Any:
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    # Our loop owns SIGTERM/SIGINT (graceful worker shutdown first); uvicorn must not
    # install its own handlers (install_signal_handlers before 0.30, capture_signals after).
    setattr(server, "install_signal_handlers", lambda: None)  # noqa: B010
    setattr(server, "capture_signals", contextlib.nullcontext)  # noqa: B010
    return server


def cmd_server(args: argparse.Namespace) -> int:
    from .scheduler import Scheduler
    from .server import create_app

    loop_name(args.loop)
    _setup(args)
    store = _store(args)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = _uvicorn_server(create_app(store), args.host, args.port)
        serving = asyncio.create_task(server.serve())
        tasks = [serving]
        if not args.no_scheduler:
            tasks.append(asyncio.create_task(Scheduler(store).run(stop)))
        print(f"outlast server on http://{args.host}:{args.port} ({store.safe_url})", flush=True)
        await stop.wait()
        server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)

    run_loop(main(), args.loop, join_threads=True)
    store.close()
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from .server.auth import create_key

    store = _store(args)
    if args.keys_cmd == "create":
        key = create_key(store, args.env, trigger_shape=args.trigger_shape)
        print(key.secret)  # alone on stdout: `export OUTLAST_SECRET_KEY=$(outlast keys create)`
        print(f"created {key.id} ({key.prefix}…) for environment {args.env!r}; "
              "it is shown once, store it now", file=sys.stderr)
    elif args.keys_cmd == "list":
        for k in store.list_api_keys(None if args.all_envs else args.env):
            state = "revoked" if k["revoked_at"] else "active"
            created = _when(k["created_at"])
            print(f"{k['id']:34} {k['env']:10} {k['prefix']}…  {state}  created {created}")
    else:
        n = store.revoke_api_key(args.key_id)
        if not n:
            print(f"no active key {args.key_id!r}", file=sys.stderr)
            return 1
        print(f"revoked {args.key_id}")
    return 0


def _example_task() -> str:
    """A task to suggest triggering by hand: one not fired by a schedule, if any."""
    from .tasks import REGISTRY

    manual = sorted(t for t, task in REGISTRY.items() if task.cron is None)
    return (manual or sorted(REGISTRY))[0]


def _dev_key(store: Any, env: str) -> str:
    """The dev environment's key: created on first start, kept in .outlast/dev-key
    (mode 0600) so later starts can show it again (the store only has its hash)."""
    from .server.auth import create_key

    path = Path(".outlast") / f"{env}-key"
    if path.exists():
        return path.read_text().strip()
    key = create_key(store, env)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.secret + "\n")
    return key.secret


def cmd_dev(args: argparse.Namespace) -> int:
    if args.no_reload:
        return _run_worker(args, dev=True)
    return _supervise(args)


def _supervise(args: argparse.Namespace) -> int:
    """Run the dev process as a child and restart it when a .py file changes."""
    argv = [sys.executable, "-m", "outlast", *sys.argv[1:], "--no-reload"]
    stop = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while True:
        stamp = _tree_stamp()
        child = subprocess.Popen(argv)
        while child.poll() is None and not stop and _tree_stamp() == stamp:
            time.sleep(0.5)
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)  # runs are handed back, not lost
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=35)
            if child.poll() is None:
                child.kill()
        if stop or child.returncode not in (0, -signal.SIGTERM, None):
            return 0 if stop else int(child.returncode or 0)
        print("outlast dev: code changed, reloading", flush=True)


def _tree_stamp() -> float:
    newest = 0.0
    skip = {".venv", "venv", ".outlast", ".git", "node_modules", "__pycache__"}
    for root, dirs, files in os.walk("."):
        dirs[:] = [d for d in dirs if d not in skip]
        for f in files:
            if f.endswith(".py"):
                with contextlib.suppress(OSError):
                    newest = max(newest, os.stat(os.path.join(root, f)).st_mtime)
    return newest


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
    )
    if not args.wait:
        _out(args, {"id": handle.id, "is_cached": handle.is_cached}, handle.id)
        return 0
    run = client.wait_for_run(handle.id, timeout=args.timeout)
    _out(args, run.to_dict(), f"{run.id} {run.status}\n{json.dumps(run.output or run.error)}")
    return 0 if str(run.status) == "COMPLETED" else 1


def _out(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, default=str, indent=2))
    else:
        print(text)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


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
    if run.error:
        print(f"error     {run.error.get('code')}: {run.error.get('message')}")
    if journal:
        print("steps")
        for j in journal:
            took = f"{(j.finished_at - j.started_at):.3f}s" if j.finished_at else "…"
            print(f"  {j.key:32} {j.kind:12} {j.status:8} attempt {j.attempt} {took}")
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
        wp = client.complete_token(args.token_id, data)
        _out(args, wp.__dict__, f"{wp.id} {wp.status}")
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


# -- schedules --------------------------------------------------------------------------------


def cmd_schedules(args: argparse.Namespace) -> int:
    """Cron schedules: list, show, create, update, enable, disable, delete; and `next`,
    which prints when an expression fires (no database needed)."""
    from . import _schedule_client, cron

    if args.schedules_cmd == "next":
        c = cron.parse(args.expression)
        tz = cron.zone(args.tz)
        start = (_dt.datetime.fromisoformat(args.after.replace("Z", "+00:00")).timestamp()
                 if args.after else time.time())
        slots = cron.upcoming(c, tz, start, max(1, min(args.n, 1000)))
        if args.json:
            print(json.dumps([_schedule_client.iso(t) for t in slots], indent=2))
            return 0
        print(f"{c.expression} in {tz.key}: {cron.describe(c.expression)}")
        for t in slots:
            local = _dt.datetime.fromtimestamp(t, tz)
            print(f"  {local:%Y-%m-%d %H:%M %a} {local.tzname() or ''} "
                  f"({local:%z})  = {_when(t)} UTC")
        return 0
    _setup(args)
    client = _client(args)
    if args.schedules_cmd == "list":
        rows = client.list_schedules(task=args.task, external_id=args.external_id,
                                     per_page=args.limit)
        if args.json:
            print(json.dumps([_schedule_client.schedule_json(s) for s in rows], indent=2))
            return 0
        print(f"{'ID':32} {'TASK':20} {'TYPE':11} {'CRON':16} {'TIMEZONE':16} "
              f"{'EXTERNAL ID':14} {'NEXT RUN (UTC)':19} ACTIVE")
        for s in rows:
            print(f"{s.id:32} {s.task_id[:20]:20} {s.type:11} {s.cron[:16]:16} "
                  f"{s.timezone[:16]:16} {(s.external_id or '-')[:14]:14} "
                  f"{_when(s.next_run_at) if s.active else '-':19} "
                  f"{'yes' if s.active else 'no'}")
        return 0
    if args.schedules_cmd == "create":
        s = client.create_schedule(args.task, args.cron, timezone=args.tz,
                                   external_id=args.external_id,
                                   deduplication_key=args.deduplication_key)
    elif args.schedules_cmd == "update":
        changes: dict[str, Any] = {"task": args.task, "cron": args.cron, "timezone": args.tz}
        if args.external_id is not None:
            changes["external_id"] = args.external_id or None
        s = client.update_schedule(args.schedule_id, **changes)
    elif args.schedules_cmd == "enable":
        s = client.activate_schedule(args.schedule_id)
    elif args.schedules_cmd == "disable":
        s = client.deactivate_schedule(args.schedule_id)
    elif args.schedules_cmd == "delete":
        s = client.delete_schedule(args.schedule_id)
        _out(args, _schedule_client.schedule_json(s), f"deleted {s.id}")
        return 0
    else:  # show
        s = client.retrieve_schedule(args.schedule_id)
        if not args.json:
            print("\n".join(f"{k:9} {v}" for k, v in _schedule_lines(s)))
            tz = cron.zone(s.timezone)
            after = s.next_run_at - 1 if s.active and s.next_run_at else time.time()
            for t in cron.upcoming(cron.parse(s.cron), tz, after, 3) if s.active else []:
                print(f"  upcoming  {_dt.datetime.fromtimestamp(t, tz):%Y-%m-%d %H:%M %Z}")
            for f in client.store.schedule_slots(s.id, 10):
                print(f"  fired     {_when(f['slot'])} UTC -> {f['run_id']}")
            return 0
    _out(args, _schedule_client.schedule_json(s), "\n".join(f"{k:9} {v}" for k, v in
                                                      _schedule_lines(s)))
    return 0


def _schedule_lines(s: Any) -> list[tuple[str, str]]:
    from . import cron

    return [
        ("id", s.id),
        ("task", s.task_id),
        ("type", s.type),
        ("cron", f"{s.cron}  ({cron.describe(s.cron)})"),
        ("timezone", s.timezone),
        ("external", s.external_id or "-"),
        ("dedup key", s.deduplication_key or "-"),
        ("active", "yes" if s.active else "no"),
        ("next run", f"{_when(s.next_run_at)} UTC" if s.active else "-"),
        ("last run", f"{_when(s.last_run_at)} UTC  {s.last_run_id or ''}".rstrip()),
    ]


def _schedules_parser(sub: Any) -> None:
    p = sub.add_parser("schedules", help="cron schedules: list, create, update, enable, "
                       "disable, delete; `next` prints when an expression fires")
    ss = p.add_subparsers(dest="schedules_cmd", required=True)
    q = ss.add_parser("list")
    _common(q)
    q.add_argument("--task")
    q.add_argument("--external-id")
    q.add_argument("--limit", type=int, default=100)
    q.add_argument("--json", action="store_true")
    q = ss.add_parser("create", help="create, or update the one with --deduplication-key")
    _common(q)
    q.add_argument("--task", required=True, help="task id")
    q.add_argument("--cron", required=True, help="e.g. '0 9 * * MON' or @daily")
    q.add_argument("--tz", "--timezone", dest="tz", help="IANA time zone (default UTC)")
    q.add_argument("--external-id", help="e.g. the tenant's id; passed to every run")
    q.add_argument("--deduplication-key", "--dedup-key", dest="deduplication_key",
                   help="creating again with this key updates instead of duplicating")
    q.add_argument("--json", action="store_true")
    q = ss.add_parser("update", help="change an imperative schedule")
    _common(q)
    q.add_argument("schedule_id")
    q.add_argument("--task")
    q.add_argument("--cron")
    q.add_argument("--tz", "--timezone", dest="tz")
    q.add_argument("--external-id", help="'' removes it")
    q.add_argument("--json", action="store_true")
    for name in ("show", "enable", "disable", "delete"):
        q = ss.add_parser(name)
        _common(q)
        q.add_argument("schedule_id")
        q.add_argument("--json", action="store_true")
    q = ss.add_parser("next", help="print the next times an expression fires")
    q.add_argument("expression", help="e.g. '*/5 * * * *'")
    q.add_argument("--tz", "--timezone", dest="tz", help="IANA time zone (default UTC)")
    q.add_argument("-n", type=int, default=5, help="how many (default 5)")
    q.add_argument("--after", help="ISO time to start from (default now)")
    q.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_schedules)


# -- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outlast", description="Durable background jobs for Python."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)

    def loop_flag(p: argparse.ArgumentParser) -> None:
        _flag(p, "--loop", help="event loop: auto (uvloop where installed), uvloop or "
              "asyncio", default="auto")

    def worker_flags(p: argparse.ArgumentParser) -> None:
        _common(p)
        _app_flag(p)
        loop_flag(p)
        _flag(p, "--concurrency", help="runs executed at once", default=10, type=int)
        _flag(p, "--prefetch", help="at most this many runs claimed ahead and held ready "
              "while recent runs are short (under 50 ms on average), never more than about "
              "0.1 s of work; default: 10 x --concurrency, 0 turns it off",
              default=None, type=int)
        _flag(p, "--lease-seconds", help="worker lease (fallback death detection)",
              default=30.0, type=float)
        _flag(p, "--shutdown-grace", help="seconds to finish runs on SIGTERM",
              default=30.0, type=float)
        _flag(p, "--no-scheduler", help="do not run timers and reapers here",
              action="store_true")
        _flag(p, "--no-life-lock", help="hold no life lock (advisory / file lock): peers "
              "then notice this worker's death only when its lease lapses (for tests)",
              action="store_true")
        _flag(p, "--version", help="the task code version served; default: a digest of "
              "the source of the modules defining the app's tasks")

    def http_flags(p: argparse.ArgumentParser, host: str) -> None:
        _flag(p, "--host", help="address to listen on", default=host)
        _flag(p, "--port", help="port to listen on", default=8030, type=int)

    p = sub.add_parser("dev", help="one process on SQLite: migrations, API, dashboard, a "
                       "worker and the scheduler; reloads on code change")
    worker_flags(p)
    http_flags(p, "127.0.0.1")
    _flag(p, "--no-reload", help="do not restart on code changes", action="store_true")
    _flag(p, "--no-server", help="no HTTP API or dashboard", action="store_true")
    p.set_defaults(fn=cmd_dev, drain=False)

    p = sub.add_parser("server", help="HTTP API, dashboard and scheduler (stateless; run "
                       "several against one PostgreSQL)")
    _common(p)
    http_flags(p, "0.0.0.0")
    loop_flag(p)
    _flag(p, "--no-scheduler", help="do not run timers and reapers here", action="store_true")
    p.set_defaults(fn=cmd_server)

    p = sub.add_parser("keys", help="secret keys for the HTTP API")
    ks = p.add_subparsers(dest="keys_cmd", required=True)
    q = ks.add_parser("create", help="print a new secret key, once")
    _common(q)
    q.add_argument("--trigger-shape", action="store_true",
                   help="a key shaped like Trigger.dev's (tr_<env>_sk_…), for apps that check")
    q = ks.add_parser("list", help="keys by prefix (never the secret)")
    _common(q)
    q.add_argument("--all-envs", action="store_true")
    q = ks.add_parser("revoke")
    _common(q)
    q.add_argument("key_id", help="key id or prefix")
    p.set_defaults(fn=cmd_keys)

    p = sub.add_parser("worker", help="claim and execute runs")
    _flag(p, "--drain", help="serve only runs locked to this version, claim no new run, "
          "exit 0 once none is unfinished", action="store_true")
    worker_flags(p)
    p.set_defaults(fn=cmd_worker)

    p = sub.add_parser("migrate", help="create or upgrade the database schema")
    _common(p)
    p.set_defaults(fn=cmd_migrate)

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
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_trigger)

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
    _schedules_parser(sub)
    _cli_versions.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("OUTLAST_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    try:
        code: int = args.fn(args)
    except OutlastError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except _environment_errors() as exc:
        # The database or the disk refused (full, read-only, unreachable): the operator's
        # to fix, so one line saying what, not a traceback through outlast's code.
        log.debug("command failed", exc_info=True)
        print(f"error [{_environment_code(exc)}]: {_first_line(exc)}", file=sys.stderr)
        return 1
    return code


def _environment_errors() -> tuple[type[Exception], ...]:
    import sqlite3

    errors: tuple[type[Exception], ...] = (sqlite3.OperationalError, sqlite3.DatabaseError,
                                           OSError)
    if "psycopg" in sys.modules:  # imported by a PostgreSQL store, if one was opened
        import psycopg

        errors += (psycopg.OperationalError,)
    return errors


def _environment_code(exc: Exception) -> str:
    text = str(exc).lower()
    if "readonly" in text or "read-only" in text:
        return "database_read_only"
    if "full" in text or "no space" in text or "disk i/o" in text:
        return "disk_full_or_failing"
    return "database_unavailable" if not isinstance(exc, OSError) else "os_error"


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
