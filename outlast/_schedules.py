"""Old import path of the schedule modules, kept only for worker.py and client.py.

Remove it once they import ``_schedule_crud``, ``_schedule_firing`` and
``_schedule_client`` themselves (worker.py is being split into modules at present).
"""

from __future__ import annotations

from ._schedule_client import AsyncScheduleMethods, ScheduleMethods
from ._schedule_crud import sync_declarative
from ._schedule_firing import fire_due

__all__ = ["AsyncScheduleMethods", "ScheduleMethods", "fire_due", "sync_declarative"]
