"""The first hour, without papercuts (issue 23): what a new user following the README and
tutorial ran into, each pinned here. Payload suggestions that pass validation, a busy
port, a completed run's earlier error under its attempt, tracebacks printed as lines,
output into a closed pipe, a second token completion, long journal keys."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from outlast import _dev_hints
from outlast._cli_format import fit
from outlast.cli import main
from outlast.client import Client
from outlast.store.base import Store
from tests.apps import dash_app

ROOT = Path(__file__).resolve().parent.parent


def _run_cli(capsys: pytest.CaptureFixture[str], db_url: str, *args: str) -> tuple[int, str]:
    code = main([*args, "--database-url", db_url])
    return code, capsys.readouterr().out


def test_banner_suggests_payloads_that_pass_validation() -> None:
    import examples.tasks  # noqa: F401  (registers the examples)
    from outlast.tasks import REGISTRY

    line = _dev_hints.suggest_trigger(REGISTRY)
    task_id, payload = line.split()[2], json.loads(line.split("--payload ")[1].strip("'"))
    assert task_id not in ("cron-tenant-digest", "cron-weekly-digest")  # fired by schedules
    REGISTRY[task_id].validate_payload(payload)  # passes, unlike '{}' did
    # Every manual example task gets a payload its own validation accepts.
    for task in REGISTRY.values():
        schema = task.definition().payload_schema
        if task.cron is None and schema.get("title") != "ScheduledPayload":
            task.validate_payload(_dev_hints.example_value(schema, schema.get("$defs", {})))
    tutorial = {"type": "object", "required": ["name", "n", "when", "email", "kind"],
                "properties": {"name": {"type": "string"},
                               "n": {"type": "integer", "exclusiveMinimum": 0},
                               "when": {"type": "string", "format": "date-time"},
                               "email": {"type": "string", "pattern": "^[^@]+@[^@]+$"},
                               "kind": {"$ref": "#/$defs/Kind"}},
                "$defs": {"Kind": {"enum": ["a", "b"]}}}
    assert _dev_hints.example_value(tutorial, tutorial["$defs"]) == {
        "name": "example", "n": 1, "when": "2026-01-01T00:00:00Z",
        "email": "ada@example.com", "kind": "a"}


def test_a_taken_port_moves_dev_and_stops_a_server(capsys: pytest.CaptureFixture[str]
                                                   ) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        moved = _dev_hints.choose_port("127.0.0.1", port, dev=True)
        assert moved is not None and moved != port
        assert f"port {port} on 127.0.0.1 is taken" in capsys.readouterr().err
        assert _dev_hints.choose_port("127.0.0.1", port, dev=False) is None
        assert "pick another port with --port" in capsys.readouterr().err
    assert _dev_hints.choose_port("127.0.0.1", port, dev=False) == port  # free again


def test_server_on_a_taken_port_says_so_without_a_traceback(db_url: str) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "outlast", "server", "--host", "127.0.0.1", "--port",
             str(port), "--database-url", db_url],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
            text=True, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and f"port {port}" in done.stderr


async def test_runs_show_puts_an_earlier_error_under_its_attempt(
    client: Client, workers: Any, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    handle = client.trigger("dash-flaky", {})
    await workers(dash_app.flaky).run_until_idle()
    code, out = _run_cli(capsys, db_url, "runs", "show", handle.id)
    assert code == 0
    assert "\nerror" not in out  # the run completed: no run-level error
    lines = out.splitlines()
    at = lines.index("attempts")
    assert lines[at + 1].split()[:2] == ["1", "failed"]
    assert lines[at + 1].endswith("task_error: first attempt fails")
    assert lines[at + 2].split()[:2] == ["2", "completed"]


async def test_a_failed_run_prints_its_traceback_as_lines(
    client: Client, workers: Any, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    handle = client.trigger("dash-boom", {})
    await workers(dash_app.boom).run_until_idle()
    code, out = _run_cli(capsys, db_url, "runs", "show", handle.id)
    assert code == 0
    assert "error     task_error: card declined" in out
    assert "\n  Traceback (most recent call last):\n" in out
    assert '"traceback"' not in out and "\\n" not in out
    from outlast._cli_format import result_text

    text = result_text(client.retrieve(handle.id))
    assert text.startswith("task_error: card declined\nTraceback (most recent call last):\n")
    assert text.endswith("ValueError: card declined")


async def test_second_token_completion_says_it_changed_nothing(
    client: Client, workers: Any, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    handle = client.trigger("dash-approval", {"order": "R-1"})
    await workers(dash_app.approval).run_until_idle()
    token = client.retrieve(handle.id).metadata["token"]
    code, out = _run_cli(capsys, db_url, "tokens", "complete", token, "--data",
                         '{"approved": true}')
    assert (code, out) == (0, f"{token} completed\n")
    code, out = _run_cli(capsys, db_url, "tokens", "complete", token, "--data",
                         '{"approved": false}')
    assert code == 0
    assert out == (f"{token} was already completed: nothing changed (the first completion "
                   "wins)\n")


def test_long_journal_keys_keep_the_columns() -> None:
    assert fit("charge", 10) == "charge    "
    key = "fetch-the-customer-record-from-the-crm-and-the-billing-system#12"
    cut = fit(key, 32)
    assert len(cut) == 32 and cut.startswith("fetch-the-custo…") and cut.endswith("system#12")


def test_output_into_a_closed_pipe_ends_quietly(client: Client, store: Store,
                                                db_url: str) -> None:
    client.batch_trigger("dash-child", list(range(1000)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "outlast", "runs", "list", "--limit", "1000", "--database-url",
         db_url],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()  # `| head -1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
