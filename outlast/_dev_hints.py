"""What the CLI tells a new user: a trigger command that passes validation (a payload
built from the task's published JSON schema), and a free port when the one asked for is
taken."""

from __future__ import annotations

import contextlib
import errno
import json
import socket
from collections.abc import Mapping
from typing import Any

from ._errors import OutlastError

_SCHEDULED = "ScheduledPayload"  # a schedule fires these; a hand trigger needs its slot


def example_value(schema: Mapping[str, Any], defs: Mapping[str, Any], depth: int = 0) -> Any:
    """A small value the schema accepts: required fields only, the simplest of each."""
    if depth > 8:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return example_value(defs.get(ref.rsplit("/", 1)[1], {}), defs, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(key) or [] if o.get("type") != "null"]
        if options:
            return example_value(options[0], defs, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: example_value(props.get(name, {}), defs, depth + 1)
                for name in schema.get("required") or []}
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        value = max(1, int(low) + 1 if "exclusiveMinimum" in schema else int(low))
        return value if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "array":
        return [example_value(schema.get("items") or {}, defs, depth + 1)
                for _ in range(int(schema.get("minItems", 0)))]
    if kind == "string":
        fmt, pattern = schema.get("format"), schema.get("pattern") or ""
        if fmt == "email" or "@" in pattern:
            return "ada@example.com"
        if fmt == "date-time":
            return "2026-01-01T00:00:00Z"
        if fmt == "date":
            return "2026-01-01"
        return "example"
    return None


def suggest_trigger(registry: Mapping[str, Any]) -> str:
    """``outlast trigger <task> --payload '<json>'`` for a task a person would trigger by
    hand (not on a cron schedule, not a schedule's target), with a payload its own
    validation accepts; the first such task by id."""
    fallback = None
    for task_id in sorted(registry):
        task = registry[task_id]
        if getattr(task, "cron", None) is not None:
            continue
        schema = task.definition().payload_schema or {}
        if schema.get("title") == _SCHEDULED:
            continue
        payload = example_value(schema, schema.get("$defs") or {}) if schema else None
        try:
            task.validate_payload(payload)
        except OutlastError:
            fallback = fallback or task_id
            continue
        return f"outlast trigger {task_id} --payload '{json.dumps(payload)}'"
    return f"outlast trigger {fallback or sorted(registry)[0]} --payload '{{...}}'"


def port_taken(host: str, port: int) -> bool:
    """Whether binding ``host:port`` fails because something already listens there."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host.strip("[]"), port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def next_free_port(host: str, port: int, tries: int = 20) -> int | None:
    for candidate in range(port, min(port + tries, 65536)):
        with contextlib.suppress(OSError):
            if not port_taken(host, candidate):
                return candidate
    return None


def choose_port(host: str, port: int, *, dev: bool) -> int | None:
    """The port to listen on. Taken: ``outlast dev`` moves to the next free one and says
    so; a server says how to pick another and gets None (it must not move: something
    points at it)."""
    import sys

    if not port_taken(host, port):
        return port
    free = next_free_port(host, port + 1) if dev else None
    if free is not None:
        print(f"outlast dev: port {port} on {host} is taken (another outlast dev?); "
              f"listening on {free} instead (choose with --port or OUTLAST_PORT)",
              file=sys.stderr, flush=True)
        return free
    print(f"error: port {port} on {host} is taken (another outlast dev or server?); "
          "stop it or pick another port with --port N (or OUTLAST_PORT=N)", file=sys.stderr)
    return None


def write_pid_file(directory: str = ".outlast") -> str:
    """Record this ``outlast dev`` process's id in ``.outlast/dev.pid``, so that a
    tutorial can kill exactly this one (``kill -9 $(cat .outlast/dev.pid)``), not every
    process whose command line says ``outlast dev``."""
    import os

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "dev.pid")
    with open(path, "w") as f:
        f.write(f"{os.getpid()}\n")
    return path


def remove_pid_file(path: str) -> None:
    """Remove the pid file if it is still this process's (a later dev may own it now)."""
    import os

    with contextlib.suppress(OSError, ValueError):
        with open(path) as f:
            if int(f.read().strip()) != os.getpid():
                return
        os.unlink(path)


def settle_dev_port(args: Any) -> bool:
    """``outlast dev``: move ``args.port`` to a free one if it is taken (False: none)."""
    if args.no_server:
        return True
    port = choose_port(args.host, args.port, dev=True)
    if port is not None:
        args.port = port
    return port is not None
