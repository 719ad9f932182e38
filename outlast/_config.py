"""Settings read from the environment; every CLI flag has an OUTLAST_* twin here."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ._errors import ConfigurationError

DEFAULT_ENV = "dev"
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
DEFAULT_IDEMPOTENCY_TTL = 30 * 24 * 3600.0


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, not {raw!r}", field=name) from None


@dataclass(frozen=True)
class Settings:
    env: str
    max_payload_bytes: int
    inplace_sleep_seconds: float
    idempotency_ttl: float

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            env=os.environ.get("OUTLAST_ENV") or DEFAULT_ENV,
            max_payload_bytes=int(_float("OUTLAST_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD_BYTES)),
            inplace_sleep_seconds=_float("OUTLAST_INPLACE_SLEEP_SECONDS", 1.0),
            idempotency_ttl=_float("OUTLAST_IDEMPOTENCY_TTL", DEFAULT_IDEMPOTENCY_TTL),
        )


def settings() -> Settings:
    return Settings.from_env()
