"""Every command in README.md and docs/tutorial.md, run in order as a reader would, with
`outlast dev` running where the page has one; the test fails when a command fails or its
output no longer matches what the page shows.

The convention (what a page must look like for this test, and what it checks):

- **Commands** are the lines of ```` ```sh ```` blocks, and the ``$ `` lines of
  ```` ```console ```` blocks. A trailing ``  # note`` on a command line is a note for the
  reader, not checked. Commands that are not ``outlast …`` are skipped (setting up a
  virtualenv, the test suite, PostgreSQL), except the few this test knows how to play:
  ``./scripts/dev`` (an ``outlast dev --app examples.tasks`` of its own) and ``kill -9
  $(cat .outlast/dev.pid)``, run as written.
- ``outlast dev …`` starts a dev process in the background (on a free port, without
  reloads) in a directory of its own: the one with the page's code (the tutorial's
  ``# tutorial.py`` blocks; the README's ``hello.py`` block), or, for ``./scripts/dev``,
  one where ``examples`` imports. Later commands run in the directory of the latest one,
  until another starts; starting one again in a directory stops the one there first.
- **Shown output** is what follows a command: the lines up to the next ``$`` in a console
  block; in a sh block, the ``#`` lines right under a command (``#`` and up to three
  spaces stripped). Every shown line must appear in the real output (stdout and stderr),
  in the same order; the real output may have lines in between. Ids (``run_…``,
  ``waitpoint_…``, ``bulk_…``), date-times and durations compare by shape, runs of
  spaces compare as one, and ``…`` matches any text.
- A command must exit 0, unless its shown output says it fails (a first line
  ``error [code]: …``, or ``<run id> FAILED``).
- ``<run id>`` and a literal run id in a command stand for the run id the latest output
  printed (the reader copies it); a literal token id, for the latest token id printed.
- Commands that only look (``runs show``, ``runs list``, ``queues list``, ``tokens
  list``) are repeated for up to ``SETTLE`` seconds until their output matches: the
  page shows a state that arrives (a retry that is due, children that finish).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "docs" / "tutorial.md"]
# Long enough for the tutorial's retry (due 15 s ± 20 % after the failure) under load.
SETTLE = 40.0
LOOKS = ("runs show", "runs list", "queues list", "tokens list")
PLAYED = ("./scripts/dev", "kill -9 $(cat .outlast/dev.pid)")

RUN_ID = re.compile(r"\brun_[0-9a-z]{26}\b")
TOKEN_ID = re.compile(r"\bwaitpoint_[0-9a-z]{20,30}\b")


@dataclass
class Command:
    page: str
    line: int
    text: str
    shown: list[str] = field(default_factory=list)


def commands(page: Path) -> list[Command]:
    """The page's commands with their shown output, in order (see the module docstring)."""
    out: list[Command] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.fullmatch(r"```(sh|console)", lines[i].strip())
        i += 1
        if fence is None:
            continue
        body: list[tuple[int, str]] = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append((i + 1, lines[i]))
            i += 1
        i += 1
        for number, text in body:
            if fence.group(1) == "console":
                if text.startswith("$ "):
                    out.append(Command(page.name, number, text[2:]))
                elif out and out[-1].page == page.name and text.strip():
                    out[-1].shown.append(text)
            elif text.startswith("#"):
                if out and out[-1].page == page.name and out[-1].line >= number - 1 - len(
                        out[-1].shown):
                    out[-1].shown.append(re.sub(r"^# {0,3}", "", text))
            elif text.strip():
                out.append(Command(page.name, number, re.sub(r"\s+#\s.*$", "", text).strip()))
    return out


def _shape(line: str) -> str:
    line = RUN_ID.sub("run_ID", line)
    line = TOKEN_ID.sub("waitpoint_ID", line)
    line = re.sub(r"\bbulk_[0-9a-z]{26}\b", "bulk_ID", line)
    line = re.sub(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d", "TIME", line)
    line = re.sub(r"\b\d+\.\d+s\b", "Ns", line)
    return " ".join(line.split())


def matches(shown: list[str], real: str) -> str | None:
    """None when every shown line appears in ``real`` in order; else the first missing."""
    lines = [_shape(x) for x in real.splitlines()]
    at = 0
    for want in shown:
        pattern = re.compile(".*".join(re.escape(part) for part in _shape(want).split("…")))
        while at < len(lines) and not pattern.fullmatch(lines[at]):
            at += 1
        if at == len(lines):
            return want
        at += 1
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Reader:
    """Plays a page's commands as a reader would, in working directories of its own."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("OUTLAST_") and k != "EXAMPLES_DATA_DIR"}
        self.env["PYTHONPATH"] = str(ROOT)
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env['PATH']}"
        self.devs: dict[Path, subprocess.Popen[bytes]] = {}
        self.cwd = tmp
        self.run_id = self.token_id = ""

    def start_dev(self, where: Path, args: list[str]) -> None:
        self.stop_dev(where)
        where.mkdir(exist_ok=True)
        log = where / f"dev-{time.monotonic_ns()}.log"
        argv = [a for a in args if a != "--no-reload"]
        if "--port" in argv:  # the page's port may be taken here: use a free one
            del argv[argv.index("--port"):argv.index("--port") + 2]
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "outlast", "dev", *argv, "--no-reload",
                 "--port", str(_free_port())],
                cwd=where, env=self.env, stdout=f, stderr=subprocess.STDOUT)
        self.devs[where] = proc
        deadline = time.monotonic() + 30
        while b"outlast dev:" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "outlast dev did not start"
            time.sleep(0.05)
        self.cwd = where

    def stop_dev(self, where: Path) -> None:
        proc = self.devs.pop(where, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        # SIGKILL: a graceful stop lets runs in flight finish (the invoice export takes
        # ten seconds), and nothing here outlives the test's directory.
        for proc in self.devs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.devs.clear()

    def substitute(self, text: str) -> str:
        text = text.replace("<run id>", self.run_id)
        text = RUN_ID.sub(self.run_id or "run_none", text)
        return TOKEN_ID.sub(self.token_id or "waitpoint_none", text)

    def run(self, text: str) -> tuple[int, str]:
        done = subprocess.run(["bash", "-c", text], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=60)
        output = done.stdout + done.stderr
        ids = RUN_ID.findall(done.stdout)
        if ids and not text.startswith(("outlast runs list", "outlast tokens list")):
            self.run_id = ids[0]  # what the reader copies: the first id printed
        tokens = TOKEN_ID.findall(done.stdout)
        if tokens:
            self.token_id = tokens[0]
        return done.returncode, output


def _python_block(page: Path, first_line: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    return "\n".join(b for b in blocks if b.startswith(first_line))


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[Reader]:
    r = Reader(tmp_path)
    (tmp_path / "tutorial").mkdir()
    (tmp_path / "tutorial" / "tutorial.py").write_text(
        _python_block(PAGES[1], "# tutorial.py"))
    (tmp_path / "hello").mkdir()
    (tmp_path / "hello" / "hello.py").write_text(_python_block(PAGES[0], "from datetime"))
    try:
        yield r
    finally:
        r.close()


def play(reader: Reader, cmd: Command) -> str | None:
    """Run one command as the page says; a problem as text, or None."""
    text = cmd.text
    if text.startswith("./scripts/dev"):
        reader.start_dev(reader.tmp / "examples", ["--app", "examples.tasks",
                                                    *shlex.split(text)[1:]])
        return None
    if text.startswith("outlast dev"):
        args = shlex.split(text)[2:]
        app = args[args.index("--app") + 1]
        reader.start_dev(reader.tmp / app, args)
        return None
    if not text.startswith(("outlast ", *PLAYED)):
        return None  # not the reader's outlast session: setup, the suite, PostgreSQL
    text = reader.substitute(text)
    fails = bool(cmd.shown) and (cmd.shown[0].startswith("error [")
                                 or cmd.shown[0].endswith(" FAILED"))
    looks = text.startswith(tuple(f"outlast {v}" for v in LOOKS))
    deadline = time.monotonic() + (SETTLE if looks else 0)
    while True:
        code, output = reader.run(text)
        missing = matches(cmd.shown, output)
        if (code == 0) != fails and missing is None:
            return None
        if time.monotonic() >= deadline:
            why = (f"exit {code}" if (code == 0) == fails else f"no line like {missing!r}")
            return f"{cmd.page}:{cmd.line}: `{text}`: {why}\n{output}"
        time.sleep(0.3)


def test_the_convention_reads_the_pages() -> None:
    """The parser sees what a reader sees: the commands, their shown output, notes cut."""
    readme = commands(PAGES[0])
    hello = next(c for c in readme if c.text.startswith("outlast trigger hello") and c.shown)
    assert hello.shown[0].startswith("run_") and hello.shown[1] == '"Hello, Dr. Ada"'
    kill = next(c for c in readme if c.text.startswith("kill"))
    assert kill.text == "kill -9 $(cat .outlast/dev.pid)" and kill.shown == []
    tutorial = commands(PAGES[1])
    first = next(c for c in tutorial if c.text.startswith("outlast trigger receipt"))
    assert first.shown == ["run_01m8ftcxwwyzgy06h1k9xwdqsz COMPLETED",
                           '"Receipt for A-1: 12.50 EUR"']
    assert matches(["a … c", "TIME x"], "a b c\nzz\n2026-01-02 03:04:05   x") is None
    assert matches(["c", "a"], "a\nc") == "a"  # in order


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_on_the_page_works_as_shown(page: Path, reader: Reader) -> None:
    problems = [p for cmd in commands(page) if (p := play(reader, cmd)) is not None]
    assert problems == [], "\n\n".join(problems)
