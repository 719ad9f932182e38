"""Identifiers: a prefix and a time-sortable, unguessable body (48-bit ms + 80 random bits)."""

from __future__ import annotations

import hashlib
import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _encode(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        value, r = divmod(value, 32)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    ms = int(time.time() * 1000) & ((1 << 48) - 1)
    return f"{prefix}_{_encode((ms << 80) | secrets.randbits(80), 26)}"


def derived_id(prefix: str, *parts: str) -> str:
    """A stable id for something a run creates, so its replay finds the same object."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return f"{prefix}_{_encode(int.from_bytes(digest[:17], 'big') >> 6, 26)}"
