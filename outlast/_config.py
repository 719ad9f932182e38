"""Settings read from the environment; every CLI flag has an OUTLAST_* twin here."""

from __future__ import annotations

import os

from ._errors import ConfigurationError

DEFAULT_ENV = "dev"
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
# A batch body is read whole before its runs are inserted in one transaction, and parsing
# it takes several times its size in memory: this bounds what one request can hold.
DEFAULT_MAX_BATCH_BYTES = 32 * 1024 * 1024
DEFAULT_IDEMPOTENCY_TTL = 30 * 24 * 3600.0


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, not {raw!r}", field=name) from None


class Settings:
    """The settings, each read from the environment when asked for, so a change to the
    environment (a test's monkeypatch, an app's os.environ) shows at the next read.

    Per setting rather than all at once: every trigger asks for one (the payload size
    limit), and reading and parsing all four was a tenth of a trigger's Python time (an
    unset name costs os.environ a raised and caught KeyError)."""

    __slots__ = ()

    @property
    def env(self) -> str:
        return os.environ.get("OUTLAST_ENV") or DEFAULT_ENV

    @property
    def max_payload_bytes(self) -> int:
        return int(_float("OUTLAST_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD_BYTES))

    @property
    def max_batch_bytes(self) -> int:
        return int(_float("OUTLAST_MAX_BATCH_BYTES", DEFAULT_MAX_BATCH_BYTES))

    @property
    def inplace_sleep_seconds(self) -> float:
        return _float("OUTLAST_INPLACE_SLEEP_SECONDS", 1.0)

    @property
    def trigger_group_max_runs(self) -> int:
        """The most runs the HTTP server writes in one transaction of grouped triggers (a
        request is never split: a larger one is a group of its own); 1 commits each
        request alone."""
        return max(1, int(_float("OUTLAST_TRIGGER_GROUP_MAX_RUNS", 5000)))

    @property
    def task_cache_seconds(self) -> float:
        """How long the HTTP server trusts a published task definition (and its compiled
        payload schema) before reading it again: a deploy shows within this time."""
        return max(0.0, _float("OUTLAST_TASK_CACHE_SECONDS", 1.0))

    @property
    def idempotency_ttl(self) -> float:
        return _float("OUTLAST_IDEMPOTENCY_TTL", DEFAULT_IDEMPOTENCY_TTL)


_SETTINGS = Settings()


def settings() -> Settings:
    return _SETTINGS
