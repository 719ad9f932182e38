"""``outlast.patched("change-id")``: change a task's code under runs already in flight.

Temporal's semantics, on outlast's journal. The first time a run reaches
``patched(id)`` the answer is recorded under the journal key ``patch:<id>``, and every
later replay of the run gets that answer:

- True when the run reaches the call on code that has the patch with no recorded entry
  still ahead of it: new work, so the new branch is taken;
- False when the run reaches it while replaying a journal recorded before the patch
  existed (recorded entries remain ahead of the call): the old code took the old
  branch there, so the replay must too, or its recorded keys would not match (C8).

The record is queued with the run's next commit, before any later operation of the run,
so a crash between the answer and its record gives the same answer again: the journal
the next attempt replays is the one this attempt answered from.
"""

from __future__ import annotations

import asyncio

from . import _serde
from ._run_context import _require
from .runs import JournalEntry
from .store.base import StepDone

_KIND = "patch"


def patched(change_id: str) -> bool:
    """True on code paths the run takes for the first time with the patch; False while
    it replays a journal recorded before the patch. Call it where the old and the new
    code part ways: ``if outlast.patched("send-sms"): ... else: ...``."""
    if not isinstance(change_id, str) or not change_id:
        raise TypeError("patched() takes a non-empty change id string")
    ctx = _require("patched()")
    key = f"{_KIND}:{change_id}"
    entry = ctx.lookup(key, _KIND, None)
    if entry is not None:
        return bool(_serde.loads(entry.output))
    answer = not ctx.replaying
    now = ctx.store.now()
    output = _serde.dumps(answer)
    op = StepDone(
        **ctx.op_base(),
        key=key,
        kind=_KIND,
        fingerprint=None,
        output=output,
        attempt=ctx.run.attempt,
        started_at=now,
        finished_at=now,
    )
    # Answered: the same key returns this from now on in this attempt too.
    ctx.journal[key] = JournalEntry(
        key=key, kind=_KIND, fingerprint=None, status="done", output=output,
        waitpoint_id=None, attempt=ctx.run.attempt, started_at=now, finished_at=now,
    )
    ctx.visited.add(key)
    try:
        on_loop = asyncio.get_running_loop() is ctx.loop
    except RuntimeError:
        on_loop = False
    if on_loop:
        ctx.committer.submit_nowait(op)
    else:  # a sync task's thread: the committer belongs to the loop
        ctx.loop.call_soon_threadsafe(ctx.committer.submit_nowait, op)
    return answer
