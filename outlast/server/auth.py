"""Secret keys: created once and shown once, stored as SHA-256 hashes, checked in
constant time. A key belongs to one environment; every request is scoped to it."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import threading
import time
from dataclasses import dataclass

from .._errors import ValidationError
from .._ids import new_id
from ..store.base import AccessStore

KEY_PREFIX = "ol_sk_"


@dataclass(frozen=True)
class NewKey:
    id: str
    env: str
    secret: str
    prefix: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


TRIGGER_ENVS = ("dev", "stg", "prod", "preview")
_ALNUM = string.ascii_letters + string.digits


def create_key(store: AccessStore, env: str, *, trigger_shape: bool = False) -> NewKey:
    """A new secret key for ``env``. ``trigger_shape`` makes it look like a Trigger.dev
    key (``tr_<env>_sk_<24 alphanumerics>``) for apps that validate the shape; the SDK
    then expects ``x-trigger-jwt`` from the server, which outlast always sends."""
    if trigger_shape:
        if env not in TRIGGER_ENVS:
            raise ValidationError(
                f"Trigger.dev-shaped keys exist for environments {', '.join(TRIGGER_ENVS)}",
                field="env",
            )
        secret = f"tr_{env}_sk_{''.join(secrets.choice(_ALNUM) for _ in range(24))}"
        prefix = secret[: len(env) + 10]
    else:
        secret = f"{KEY_PREFIX}{env}_{secrets.token_urlsafe(32)}"
        prefix = secret[: len(KEY_PREFIX) + len(env) + 5]
    key = NewKey(id=new_id("key"), env=env, secret=secret, prefix=prefix)
    store.create_api_key(key.id, env, prefix, hash_key(secret))
    return key


class KeyChecker:
    """Resolves a bearer secret to its environment. Results are cached for a couple of
    seconds, so a revoked key stops working within that time on every server."""

    def __init__(self, store: AccessStore, ttl: float = 2.0) -> None:
        self.store = store
        self.ttl = ttl
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def cached(self, secret: str) -> tuple[bool, str | None]:
        """(True, its environment) if ``secret``'s answer is cached and fresh, without
        touching the database (the trigger endpoint asks on the event loop)."""
        hit = self._cache.get(hash_key(secret))
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return True, hit[1]
        return False, None

    def env_for(self, secret: str) -> str | None:
        digest = hash_key(secret)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        row = self.store.find_api_key(digest)
        env = None
        if row is not None and row["revoked_at"] is None and hmac.compare_digest(
            str(row["key_hash"]), digest
        ):
            env = str(row["env"])
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now, env)
        return env
