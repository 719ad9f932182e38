"""Waitpoint tokens seen from outside a run: the ``Token`` a caller gets, callback URLs and
their signatures.

A token's callback URL carries an HMAC of the token id made with a server secret kept in
the database (not an API key, so keys can rotate without breaking URLs already handed to
partners). The secret is created once, by whichever process needs it first.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from hashlib import sha256

from .store.base import Settings


@dataclass(frozen=True)
class Token:
    """A waitpoint token: complete it by id, or by POSTing to ``callback_url``."""

    id: str
    callback_url: str
    timeout_at: float | None = None


_SECRET_SETTING = "callback_secret"
_secrets: dict[int, bytes] = {}


def _secret(store: Settings) -> bytes:
    cached = _secrets.get(id(store))
    if cached is None:
        value = store.get_setting(_SECRET_SETTING)
        if value is None:
            value = store.set_setting_if_absent(_SECRET_SETTING, secrets.token_hex(32))
        cached = _secrets[id(store)] = bytes.fromhex(value)
    return cached


def signature(store: Settings, token_id: str) -> str:
    return hmac.new(_secret(store), token_id.encode(), sha256).hexdigest()


def verify(store: Settings, token_id: str, candidate: str) -> bool:
    """Constant-time check of a callback URL's signature."""
    # Bytes, not str: compare_digest refuses non-ASCII strings (a TypeError, a 500).
    return hmac.compare_digest(signature(store, token_id).encode(), candidate.encode())


def public_url() -> str:
    return (
        os.environ.get("OUTLAST_PUBLIC_URL")
        or os.environ.get("OUTLAST_API_URL")
        or "http://localhost:8030"
    ).rstrip("/")


def callback_url(store: Settings, token_id: str) -> str:
    sig = signature(store, token_id)
    return f"{public_url()}/api/v1/waitpoints/tokens/{token_id}/callback/{sig}"
