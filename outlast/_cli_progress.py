"""What the CLI shows while it waits: a run's live status, current step and progress
(``outlast trigger --wait``), and a progress bar for long commands (``progress``).

On a terminal these are drawn with ``rich`` on stderr; piped, they are plain lines on
stderr, one per change; stdout keeps only the command's result, so ``| head`` or ``| jq``
see what they always saw.

The metadata convention a task follows to be shown (docs/reference/cli.md):

- ``metadata.set("progress", 0.4)``: a fraction from 0 to 1 draws a bar (40 %);
- ``metadata.set("progress", {"done": 120, "total": 500})`` does the same with counts;
- ``metadata.set("step", "exporting page 3")``: the current step as the task tells it.
  Without it the view shows the last step the journal has and how many are done.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from .runs import JournalEntry, Run


class _Retrieve(Protocol):
    def retrieve(self, run_id: str) -> Run: ...


@dataclass(frozen=True)
class RunView:
    """What one look at a run shows."""

    status: str
    step: str  # the task's own "step" metadata, else "after <last journaled step>"
    steps_done: int
    fraction: float | None  # 0..1, or None when the task reports no progress

    def line(self, run: Run, elapsed: float) -> str:
        parts = [f"{run.id} {run.task_id} {self.status} {elapsed:5.1f}s"]
        if self.step:
            parts.append(f"step: {self.step}")
        if self.steps_done:
            parts.append(f"steps done: {self.steps_done}")
        if self.fraction is not None:
            parts.append(f"progress: {self.fraction * 100:.0f}%")
        return "  ".join(parts)


def fraction(value: Any) -> float | None:
    """The progress fraction of a ``progress`` metadata value, per the convention above."""
    if isinstance(value, dict):
        done, total = value.get("done"), value.get("total")
        if isinstance(done, int | float) and isinstance(total, int | float) and total > 0:
            return max(0.0, min(1.0, float(done) / float(total)))
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return max(0.0, min(1.0, float(value)))
    return None


def view(run: Run, journal: Sequence[JournalEntry]) -> RunView:
    metadata = run.metadata if isinstance(run.metadata, dict) else {}
    steps = [e for e in journal if e.kind == "step"]
    step = metadata.get("step")
    if not isinstance(step, str) or not step:
        step = f"after {steps[-1].key}" if steps else ""
    return RunView(str(run.status), step, len(steps), fraction(metadata.get("progress")))


def watch_run(
    client: _Retrieve,
    run_id: str,
    *,
    timeout: float | None = None,
    journal: Callable[[str], Sequence[JournalEntry]] | None = None,
    out: TextIO | None = None,
    poll: float = 0.2,
) -> Run:
    """Wait for a run to end, showing it as it goes; return the final run."""
    stream = out or sys.stderr
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout

    def look() -> tuple[Run, RunView]:
        run = client.retrieve(run_id)
        return run, view(run, journal(run_id) if journal else ())

    live = _LiveView(stream) if stream.isatty() else _PlainView(stream)
    with live:
        while True:
            run, shown = look()
            live.show(run, shown, time.monotonic() - started)
            if run.is_final:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {run.status} after {timeout} s")
            time.sleep(poll)


class _PlainView:
    """One line per change (status, step, whole percent), for logs and pipes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last: tuple[str, str, int, int | None] | None = None

    def __enter__(self) -> _PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def show(self, run: Run, v: RunView, elapsed: float) -> None:
        key = (v.status, v.step, v.steps_done,
               None if v.fraction is None else int(v.fraction * 100))
        if key != self.last:
            self.last = key
            print(v.line(run, elapsed), file=self.stream, flush=True)


class _LiveView:
    """A rich Live panel redrawn in place: status, step, and a bar when there is progress."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream)
        self.live = Live(console=self.console, refresh_per_second=8, transient=False)

    def __enter__(self) -> _LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def show(self, run: Run, v: RunView, elapsed: float) -> None:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.text import Text

        colour = {"COMPLETED": "green", "FAILED": "red", "EXECUTING": "cyan"}.get(v.status,
                                                                                  "yellow")
        head = Text.assemble((f"{run.id} ", "bold"), f"{run.task_id}  ", (v.status, colour),
                             f"  {elapsed:.1f}s")
        parts: list[Any] = [head]
        if v.step or v.steps_done:
            parts.append(Text(f"step: {v.step or '-'}   steps done: {v.steps_done}"))
        if v.fraction is not None:
            parts.append(Group(ProgressBar(total=100, completed=v.fraction * 100, width=40),
                               Text(f"{v.fraction * 100:.0f}%")))
        self.live.update(Group(*parts))


class Progress:
    """A progress bar for a long command (bulk replay or cancel, exports): ``advance`` as
    items are done. Drawn on stderr when it is a terminal; silent otherwise, so piped
    output stays the command's own."""

    def __init__(self, total: int | None, label: str, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.label = label
        self.done = 0
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(console=Console(file=self.stream), transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total)
        return self

    @property
    def drawing(self) -> bool:
        """Whether a bar is on screen (stderr is a terminal)."""
        return self._bar is not None

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def update(self, done: int, total: int | None = None) -> None:
        """Set how many are done (and the total, once it is known)."""
        self.done = done
        if total is not None:
            self.total = total
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, total=self.total)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


@contextlib.contextmanager
def progress(total: int | None, label: str) -> Iterator[Progress]:
    """``with progress(len(ids), "replaying") as bar: ... bar.advance()``."""
    with Progress(total, label) as bar:
        yield bar
