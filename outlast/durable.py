"""Durable operations inside a task: the journal, replay and suspension.

Every durable call (``step.run``, ``wait.*``, child triggers) gets a key — its name plus
an occurrence count (``charge``, ``charge#2``) — and is looked up in the run's journal,
loaded once per attempt. A recorded outcome is returned at once; otherwise the work is
done and its outcome committed before the call returns (nothing is acknowledged to task
code before its commit). Keys, not positions, match calls to records, so parallel
branches replay whatever order they finished in.

A wait that is not yet satisfied blocks its branch. When every branch of the run is
blocked on waits and no step or commit is in flight, the attempt is unwound (the task's
asyncio task is cancelled) and the run is suspended: WAITING, holding no worker, no queue
slot and no memory. Any completed waitpoint re-queues it, and the replay runs as far as
it now can.

This module is the front door task code and the rest of the package import; the parts
live in modules named for them: ``_run_context`` (``RunContext``: the journal, keys, the
C8 checks, commits, suspension; ``DurableCall``, every call's bracket), ``_steps``,
``_waits``, ``_child_runs``, ``_task_logger``, ``_run_metadata``, and ``_sync_calls``
(durable calls from sync task code).
"""

from __future__ import annotations

from ._child_runs import trigger_children, wait_for_children
from ._run_context import (
    CommitQueue,
    DurableCall,
    RunContext,
    RunInfo,
    _current,
    _require,
    current_run,
    fingerprint,
    in_run,
)
from ._run_metadata import _Metadata
from ._steps import _Step
from ._task_logger import _Logger
from ._waits import Token, WaitResult, _Wait

__all__ = [
    "CommitQueue",
    "DurableCall",
    "RunContext",
    "RunInfo",
    "Token",
    "WaitResult",
    "_current",
    "_require",
    "current_run",
    "fingerprint",
    "in_run",
    "logger",
    "metadata",
    "step",
    "trigger_children",
    "wait",
    "wait_for_children",
]

step = _Step()
wait = _Wait()
logger = _Logger()
metadata = _Metadata()
