"""``outlast dev``, ``server`` and ``worker``: running outlast (``migrate`` and ``doctor``
are registered here, from their own modules); ``keys``: the secret keys a server checks."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _cli_doctor, _cli_migrate
from ._cli_common import _app_flag, _common, _flag, _setup, _store, _when, load_app
from ._dev_hints import (
    choose_port,
    remove_pid_file,
    settle_dev_port,
    suggest_trigger,
    write_pid_file,
)
from ._loop import loop_name
from ._loop import run as run_loop
from ._retention import ensure_dev_policy

if TYPE_CHECKING:
    from .store.base import Store

log = logging.getLogger("outlast.cli")


def _worker(args: argparse.Namespace, store: Any) -> Any:
    from .worker import Worker

    return Worker(
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


def _run_worker(args: argparse.Namespace, *, dev: bool) -> int:
    # A SIGTERM before the loop's handler exists (the app importing, migrations running)
    # would end the process by the default action, exit -15; a deploy stopping a worker
    # that is still starting gets a clean stop instead, once start-up is done.
    early: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: early.append(signum))
    loop_name(args.loop)  # a bad --loop fails before anything is written
    if dev and not settle_dev_port(args):
        return 2
    _setup(args)
    store = _store(args, migrate=dev)
    if dev:  # finished runs kept 7 days unless a policy says otherwise (docs: retention)
        ensure_dev_policy(store, args.env)
        # Incoming webhooks seal their secrets: a local key beside the dev database.
        from ._secret_box import ensure_dev_key

        ensure_dev_key(args.database_url)
    load_app(args.app)
    from .tasks import REGISTRY

    if not REGISTRY:
        print("no tasks found: pass --app MODULE (or set [tool.outlast] app)", file=sys.stderr)
        return 2
    worker = _worker(args, store)
    _serve_metrics(args, store)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if early:
            stop.set()
        server = None
        if dev and not args.no_server:
            server = _dev_server(args, store)
            serving = asyncio.create_task(server.serve())
        if dev:
            pid_file = write_pid_file()
            _dev_banner(args, store, with_server=server is not None)
        await worker.run(stop)
        if server is not None:
            server.should_exit = True
            await serving
        if dev:
            remove_pid_file(pid_file)

    # See run_loop: sync steps may linger, and a KeyboardInterrupt or SystemExit while runs
    # execute is task code's (SIGINT and SIGTERM are the loop's), not a reason to stop.
    run_loop(main(), args.loop, join_threads=False, contain=lambda: bool(worker.active))
    store.close()
    _exit_past_task_threads()
    return 0


def _dev_server(args: argparse.Namespace, store: Any) -> Any:
    from .server import create_app

    if _is_loopback(args.host):
        # Only this machine can reach the dashboard: it opens without a login
        # (unless OUTLAST_DASHBOARD_PASSWORD is set or OPEN was set to 0).
        os.environ.setdefault("OUTLAST_DASHBOARD_OPEN", "1")
    return _uvicorn_server(create_app(store), args.host, args.port)


def _dev_banner(args: argparse.Namespace, store: Any, *, with_server: bool) -> None:
    from .tasks import REGISTRY

    secret = _dev_key(store, args.env)
    print(
        f"outlast dev: {len(REGISTRY)} task{'s' if len(REGISTRY) != 1 else ''} "
        f"({', '.join(sorted(REGISTRY))}) on "
        f"{store.safe_url}, env {args.env!r}\n"
        + (f"  API + dashboard: http://{args.host}:{args.port}/  "
           f"(OpenAPI: /api/v1/openapi.json)\n"
           f"  secret key:  export OUTLAST_SECRET_KEY={secret}\n"
           if with_server else "")
        + f"  trigger one:  {suggest_trigger(REGISTRY)}\n"
        "  watch runs:   outlast runs list",
        flush=True,
    )


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

    # http="auto": httptools (a dependency, in C) where installed, else h11. The bench's
    # ceiling apps are served by this same function, so they parse alike.
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    # Our loop owns SIGTERM/SIGINT (graceful worker shutdown first); uvicorn must not
    # install its own handlers (install_signal_handlers before 0.30, capture_signals after).
    setattr(server, "install_signal_handlers", lambda: None)  # noqa: B010
    setattr(server, "capture_signals", contextlib.nullcontext)  # noqa: B010
    return server


def cmd_server(args: argparse.Namespace) -> int:
    from ._presence import announce, dashboard_guard
    from .scheduler import Scheduler
    from .server import create_app

    loop_name(args.loop)
    if choose_port(args.host, args.port, dev=False) is None:
        return 2
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
        tasks.append(asyncio.create_task(announce(
            store, "server", args.env, stop, listen=f"{args.host}:{args.port}",
            dashboard=dashboard_guard())))
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


def _loop_flag(p: argparse.ArgumentParser) -> None:
    _flag(p, "--loop", help="event loop: auto (uvloop where installed), uvloop or "
          "asyncio", default="auto")


def _worker_flags(p: argparse.ArgumentParser) -> None:
    _common(p)
    _app_flag(p)
    _loop_flag(p)
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
    _flag(p, "--metrics-port", help="serve Prometheus /metrics on this port (needs "
          "outlast[metrics])", default=None, type=int)
    _flag(p, "--no-life-lock", help="hold no life lock (advisory / file lock): peers "
          "then notice this worker's death only when its lease lapses (for tests)",
          action="store_true")
    _flag(p, "--version", help="the task code version served; default: a digest of "
          "the source of the modules defining the app's tasks")


def _serve_metrics(args: argparse.Namespace, store: Store) -> None:
    """``--metrics-port``: Prometheus /metrics from a thread of the worker's own."""
    if args.metrics_port:
        from . import _metrics

        _metrics.serve(args.metrics_port, store)


def _http_flags(p: argparse.ArgumentParser, host: str) -> None:
    _flag(p, "--host", help="address to listen on", default=host)
    _flag(p, "--port", help="port to listen on", default=8030, type=int)


def _add_keys(sub: Any) -> None:
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


def add_commands(sub: Any) -> None:
    p = sub.add_parser("dev", help="one process on SQLite: migrations, API, dashboard, a "
                       "worker and the scheduler; reloads on code change")
    _worker_flags(p)
    _http_flags(p, "127.0.0.1")
    _flag(p, "--no-reload", help="do not restart on code changes", action="store_true")
    _flag(p, "--no-server", help="no HTTP API or dashboard", action="store_true")
    p.set_defaults(fn=cmd_dev, drain=False)

    p = sub.add_parser("server", help="HTTP API, dashboard and scheduler (stateless; run "
                       "several against one PostgreSQL)")
    _common(p)
    _http_flags(p, "0.0.0.0")
    _loop_flag(p)
    _flag(p, "--no-scheduler", help="do not run timers and reapers here", action="store_true")
    p.set_defaults(fn=cmd_server)

    _add_keys(sub)

    p = sub.add_parser("worker", help="claim and execute runs")
    _flag(p, "--drain", help="serve only runs locked to this version, claim no new run, "
          "exit 0 once none is unfinished", action="store_true")
    _worker_flags(p)
    p.set_defaults(fn=cmd_worker)

    _cli_migrate.add_commands(sub)
    _cli_doctor.add_commands(sub)
