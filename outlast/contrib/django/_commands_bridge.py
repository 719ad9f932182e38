"""The management commands' way to outlast's CLI (``contrib._commands``)."""

from __future__ import annotations

from .._commands import run_command as run

__all__ = ["run"]
