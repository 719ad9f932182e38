"""The CLI while it waits: ``outlast trigger --wait`` in a real terminal (tmux, driven by
send-keys and read with capture-pane) shows the run's status, current step and a progress
bar; piped, it prints plain lines on stderr and keeps stdout the result; piping any
command into ``head`` ends quietly, without a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from outlast._alerts import create_rule
from outlast._cli_progress import Progress, fraction
from outlast.store import open_store
from tests.conftest import ROOT, spawn_worker

APP = "tests.apps.progress_app"


def test_the_progress_convention() -> None:
    assert fraction(0.4) == 0.4
    assert fraction({"done": 3, "total": 12}) == 0.25
    assert fraction(7) == 1.0  # clamped
    assert fraction("40%") is None and fraction(True) is None
    assert fraction({"done": 1, "total": 0}) is None


def test_the_progress_helper_is_silent_when_piped(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress(3, "replaying") as bar:
        for _ in range(3):
            bar.advance()
    assert bar.done == 3
    assert capsys.readouterr() == ("", "")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/progress.db"
    store = open_store(url)
    store.migrate()
    store.close()
    return url


@pytest.fixture
def worker(sqlite_url: str) -> Iterator[None]:
    proc = spawn_worker(sqlite_url, APP, concurrency=2)
    yield
    proc.kill()
    proc.wait(10)


def _cli_env(url: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OUTLAST_DATABASE_URL": url,
            "OUTLAST_LOG_LEVEL": "WARNING"}


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Callable[..., str]]:
    assert shutil.which("tmux"), "tmux is missing: scripts/test installs Debian's tmux"
    socket = f"outlast-test-{os.getpid()}"

    def run(*args: str) -> str:
        return subprocess.run(["tmux", "-L", socket, *args], check=True,
                              capture_output=True, text=True).stdout

    run("-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", "120", "-y", "30",
        "bash --norc --noprofile")
    yield run
    subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)


def _until(check: Callable[[], str], want: Callable[[str], bool], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen = check()
    while not want(seen):
        assert time.monotonic() < deadline, f"never showed up; the screen was:\n{seen}"
        time.sleep(0.1)
        seen = check()
    return seen


def test_trigger_wait_in_a_terminal_shows_step_and_progress(
    tmux: Callable[..., str], sqlite_url: str, worker: None, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    command = (
        f"cd {ROOT} && export PYTHONPATH={ROOT} OUTLAST_DATABASE_URL={sqlite_url} "
        f"OUTLAST_LOG_LEVEL=WARNING && {sys.executable} -m outlast trigger progress-demo "
        f"--app {APP} --payload '{{\"release\": \"{release}\"}}' --wait"
    )
    tmux("send-keys", "-t", "t", command, "Enter")

    def screen() -> str:
        return tmux("capture-pane", "-p", "-t", "t")

    seen = _until(screen, lambda s: "40%" in s, 60)
    assert "EXECUTING" in seen
    assert "step: exporting pages" in seen
    assert "steps done: 1" in seen
    assert "━" in seen  # rich's bar
    release.touch()
    seen = _until(screen, lambda s: '"pages": 10' in s, 60)
    assert "COMPLETED" in seen


def test_trigger_wait_piped_prints_plain_lines(
    sqlite_url: str, worker: None, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    release.touch()
    done = subprocess.run(
        [sys.executable, "-m", "outlast", "trigger", "progress-demo", "--app", APP,
         "--payload", f'{{"release": "{release}"}}', "--wait", "--timeout", "60"],
        cwd=ROOT, env=_cli_env(sqlite_url), capture_output=True, text=True, timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].endswith(" COMPLETED")  # the result, as before
    lines = done.stderr.splitlines()
    assert lines and all(line.startswith("run_") for line in lines)  # no escape codes
    assert "\x1b" not in done.stderr
    assert "progress: 100%" in lines[-1] and "COMPLETED" in lines[-1]


@pytest.mark.usefixtures("encryption_key")  # the rules' secrets are sealed
@pytest.mark.parametrize("args", [["--help"], ["alerts", "list", "--json"]])
def test_piping_into_head_never_prints_a_traceback(
    sqlite_url: str, args: list[str]
) -> None:
    store = open_store(sqlite_url)
    for i in range(400):  # well past a pipe's buffer
        create_rule(store, store.clock, "dev", event="run.failed",
                    webhook_url=f"https://hooks.example.com/{i}/" + "x" * 200)
    store.close()
    shell = (f"{sys.executable} -m outlast {' '.join(args)} | head -n 1; "
             "echo rc=${PIPESTATUS[0]}")
    done = subprocess.run(["bash", "-c", shell], cwd=ROOT, env=_cli_env(sqlite_url),
                          capture_output=True, text=True, timeout=60)
    assert done.stderr == "", done.stderr
    assert "rc=141" in done.stdout or "rc=0" in done.stdout


def test_bulk_cancel_in_a_terminal_draws_a_bar(
    tmux: Callable[..., str], sqlite_url: str
) -> None:
    import tests.apps.progress_app  # noqa: F401 - the task, to trigger it here
    from outlast.client import Client

    client = Client(database_url=sqlite_url, env="dev")
    client.batch_trigger("progress-demo", [{"release": "/nonexistent"}] * 1500)
    client.close()
    command = (
        f"cd {ROOT} && export PYTHONPATH={ROOT} OUTLAST_DATABASE_URL={sqlite_url} "
        f"OUTLAST_LOG_LEVEL=WARNING && {sys.executable} -m outlast runs bulk cancel "
        f"--task progress-demo --batch-size 100; echo ex''it=$?"
    )
    tmux("send-keys", "-t", "t", command, "Enter")
    seen = _until(lambda: tmux("capture-pane", "-p", "-t", "t"), lambda s: "exit=" in s, 60)
    assert "exit=0" in seen
    assert "━" in seen and "100%" in seen  # one bar, drawn in place
    assert "1,500/1,500" not in seen.split("resume with")[-1]  # not a line per batch
