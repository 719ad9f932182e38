"""What `outlast doctor` reads from the store (outlast/_doctor.py runs the checks)."""

from __future__ import annotations

import abc
from typing import Any


class DoctorOps:
    """Abstract (Store, an ABC, is among the bases of every class that mixes this in)."""

    @abc.abstractmethod
    def doctor_database(self) -> dict[str, Any]:
        """PostgreSQL: max_connections, reserved, connections, db_now (epoch seconds);
        all None on SQLite."""

    @abc.abstractmethod
    def doctor_stale_workers(self, env: str, before: float) -> list[dict[str, Any]]:
        """Workers marked alive whose lease lapsed before ``before``."""

    @abc.abstractmethod
    def doctor_stuck_runs(self, env: str, before: float) -> list[dict[str, Any]]:
        """Runs held by no live holder since before ``before``."""

    @abc.abstractmethod
    def doctor_paused_backlog(self, env: str) -> list[dict[str, Any]]:
        """Paused queues with queued runs: name, queued."""

    @abc.abstractmethod
    def doctor_queued_tasks(self, env: str) -> list[dict[str, Any]]:
        """Queued runs by task: task_id, queued, oldest."""
