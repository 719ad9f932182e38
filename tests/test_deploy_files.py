"""The Dockerfile, deploy/compose.yaml and deploy/systemd, checked statically.

Every command they run parses as an `outlast` command, every path they copy exists,
every OUTLAST_* variable they set is one outlast reads, the start order is health-gated,
secrets come from the environment, and stop timeouts outlast the worker's shutdown grace.
The systemd units pass `systemd-analyze verify`. scripts/container-test runs the image
and the compose stack for real (minutes; not part of this suite).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from outlast.cli import build_parser
from outlast.server import create_app
from outlast.store import open_store
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _known_env() -> set[str]:
    """OUTLAST_* names outlast reads: flags' environment twins and names in the code."""
    names = set(re.findall(r"\[env:\s+(OUTLAST_\w+)\]", _all_help(build_parser())))
    for f in (ROOT / "outlast").rglob("*.py"):
        names |= set(re.findall(r"\"(OUTLAST_[A-Z_]+)\"", f.read_text()))
    return names


def _all_help(parser: argparse.ArgumentParser) -> str:
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                text += _all_help(sub)
    return text


def _parses(argv: list[str]) -> argparse.Namespace:
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`outlast {' '.join(argv)}` does not parse") from exc


def _defaults(value: str) -> str:
    """Compose's ${VAR:-default} -> default (and ${VAR} -> VAR) for a parse check."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?[^}]*\}", lambda m: m.group(2) or m.group(1), value)


# -- Dockerfile ------------------------------------------------------------------------------

def test_dockerfile_is_multi_stage_non_root_with_outlast_entrypoint_and_a_health_check(
    tmp_path: Path,
) -> None:
    ins = _instructions(ROOT / "Dockerfile")
    args = [a for w, a in ins if w == "ARG"]
    assert re.fullmatch(r"BASE_IMAGE=python:3\.\d+-slim", args[0]), args
    froms = [a for w, a in ins if w == "FROM"]
    assert len(froms) >= 2 and all(f.startswith("${BASE_IMAGE}") for f in froms)
    users = [a for w, a in ins if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(w == "RUN" and "useradd" in a and users[-1] in a for w, a in ins)
    assert ("ENTRYPOINT", '["outlast"]') in ins  # exec form: outlast is PID 1, gets SIGTERM
    assert ("STOPSIGNAL", "SIGTERM") in ins
    cmd = next(a for w, a in ins if w == "CMD")
    _parses(json.loads(cmd))
    health = next(a for w, a in ins if w == "HEALTHCHECK")
    assert "/api/v1/health" in health
    store = open_store(f"sqlite:///{tmp_path}/health.db")
    try:
        store.migrate()
        routes = create_app(store).routes
    finally:
        store.close()
    assert any(getattr(r, "path", None) == "/api/v1/health" for r in routes)


def _sent_to_docker(path: str) -> bool:
    """Whether .dockerignore (an allow list after `*`) lets ``path`` into the context."""
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    return any(path == a or path.startswith(a + "/") for a in allowed)


def test_dockerfiles_copy_only_paths_that_exist_and_set_only_known_variables() -> None:
    known = _known_env()
    for dockerfile in (ROOT / "Dockerfile", DEPLOY / "example" / "Dockerfile"):
        for word, arg in _instructions(dockerfile):
            if word == "COPY" and not arg.startswith("--from"):
                parts = [p for p in shlex.split(arg) if not p.startswith("--")]
                for src in parts[:-1]:
                    assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src}"
                    assert _sent_to_docker(src.rstrip("/")), f"{src} is in .dockerignore"
            if word == "ENV":
                for name in re.findall(r"(OUTLAST_\w+)=", arg):
                    assert name in known, f"{dockerfile.name}: ENV {name} is read by nothing"


# -- compose ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def test_compose_runs_postgres_migrate_server_and_two_workers_in_a_health_gated_order(
    compose: dict[str, Any],
) -> None:
    s = compose["services"]
    assert {"postgres", "migrate", "server", "worker-1", "worker-2"} <= set(s)
    assert s["postgres"]["healthcheck"]["test"]
    assert s["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert s["migrate"]["restart"] == "no"
    for name in ("server", "worker-1", "worker-2"):
        assert s[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"}}, name
    assert "pgdata" in compose["volumes"]
    assert any(v.startswith("pgdata:") for v in s["postgres"]["volumes"])
    assert (DEPLOY / s["migrate"]["build"]["context"] / "Dockerfile").exists()


def test_compose_commands_parse_and_use_apps_paths_and_variables_that_exist(
    compose: dict[str, Any],
) -> None:
    known = _known_env()
    for name, svc in compose["services"].items():
        if name == "postgres":
            continue
        args = _parses([_defaults(a) for a in svc["command"]])
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc.get("volumes", [])}
        if getattr(args, "app", None):
            # The app is mounted into /app, the image's working directory.
            module = args.app.replace(".", "/") + ".py"
            assert (DEPLOY / mounts["/app"] / module).exists(), f"{name}: --app {args.app}"
        for source in mounts.values():
            assert (DEPLOY / source).exists(), f"{name}: mounts {source}"
        for var in svc["environment"]:
            assert var in known, f"{name}: {var} is read by nothing"


def test_compose_takes_secrets_from_the_environment_and_stops_workers_gracefully(
    compose: dict[str, Any],
) -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    # Required, never defaulted: compose refuses to start without them.
    assert "${POSTGRES_PASSWORD:?" in text and "${OUTLAST_DASHBOARD_PASSWORD:?" in text
    assert not re.search(r"PASSWORD: [\"']?[\w-]+[\"']?\s*$", text, flags=re.M)
    example = (DEPLOY / "env.example").read_text()
    assert "POSTGRES_PASSWORD=\n" in example and "secrets.token_urlsafe" in example
    for name in ("worker-1", "worker-2"):
        svc = compose["services"][name]
        grace = float(svc["environment"]["OUTLAST_SHUTDOWN_GRACE"])
        assert float(svc["stop_grace_period"].rstrip("s")) > grace
        assert svc["healthcheck"] == {"disable": True}


# -- systemd ---------------------------------------------------------------------------------

def _unit(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in path.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )


def test_systemd_units_outlast_the_worker_grace_restart_and_read_an_environment_file() -> None:
    worker = _unit(DEPLOY / "systemd" / "outlast-worker@.service")
    server = _unit(DEPLOY / "systemd" / "outlast-server.service")
    grace = float(re.search(r"--shutdown-grace (\d+)", worker["ExecStart"]).group(1))  # type: ignore[union-attr]
    assert float(worker["TimeoutStopSec"]) > grace
    assert worker["Restart"] == "always" and server["Restart"] == "on-failure"
    for name, unit in (("outlast-worker@.service", worker), ("outlast-server.service", server)):
        text = (DEPLOY / "systemd" / name).read_text()
        assert "\nEnvironmentFile=/etc/outlast/outlast.env\n" in text
        assert unit["KillSignal"] == "SIGTERM"
        _parses(shlex.split(unit["ExecStart"])[1:])
    env = _unit(DEPLOY / "systemd" / "outlast.env")
    assert set(env) <= _known_env()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (scripts/test installs it)")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """With ExecStart pointed at this venv's outlast (verify checks the binary exists)."""
    outlast = Path(sys.executable).with_name("outlast")
    for unit in ("outlast-server.service", "outlast-worker@.service"):
        text = (DEPLOY / "systemd" / unit).read_text().replace("/opt/outlast/bin/outlast",
                                                               str(outlast))
        name = unit.replace("@.", "@1.")
        (tmp_path / name).write_text(text)
        done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)],
                              capture_output=True, text=True,
                              env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
        problems = [line for line in (done.stdout + done.stderr).splitlines()
                    if name in line or "Unknown" in line or "Failed" in line]
        assert done.returncode == 0 and not problems, done.stdout + done.stderr
