"""Identifiers: a prefix and a time-sortable, unguessable body (48-bit ms + 80 random bits)."""

from __future__ import annotations

import hashlib
import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
# Two digits per 10 bits: a batch trigger makes an id per run, and a digit-by-digit loop
# was a fifth of its Python time.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_SHIFTS = tuple(range(120, -1, -10))  # 26 digits = 130 bits, the top 2 always zero
# A random byte to a digit by its low 5 bits: 256 is a multiple of 32, so every digit is
# equally likely and 16 bytes give 16 digits of 5 random bits each, the 80 bits of an id.
_DIGIT_OF_BYTE = bytes(_ALPHABET.encode()[b & 31] for b in range(256))


def _encode(value: int) -> str:
    pairs = _PAIRS
    return "".join([pairs[(value >> s) & 1023] for s in _SHIFTS])


def _time_digits(ms: int) -> str:
    """The first 10 digits of an id: 48 bits of milliseconds (and 2 zero bits on top)."""
    pairs = _PAIRS
    return "".join([pairs[(ms >> s) & 1023] for s in (40, 30, 20, 10, 0)])


def new_id(prefix: str) -> str:
    # The 80 random bits are the last 16 digits, one per random byte (see new_ids): a
    # third of the cost of encoding one 130-bit number, and every trigger makes an id.
    ms = int(time.time() * 1000) & ((1 << 48) - 1)
    return f"{prefix}_{_time_digits(ms)}{os.urandom(16).translate(_DIGIT_OF_BYTE).decode()}"


def new_ids(prefix: str, n: int) -> list[str]:
    """``n`` new ids at once, for a batch: the same as ``new_id`` n times within one
    millisecond, for a fraction of the cost. The 80 random bits are the last 16 digits, so
    all of them come from one read of the random source and one bytes.translate (a
    base32 encoding is a Python loop, and was most of the time)."""
    ms = int(time.time() * 1000) & ((1 << 48) - 1)
    head = f"{prefix}_{_time_digits(ms)}"
    body = os.urandom(16 * n).translate(_DIGIT_OF_BYTE).decode()
    return [head + body[i : i + 16] for i in range(0, 16 * n, 16)]


def derived_id(prefix: str, *parts: str) -> str:
    """A stable id for something a run creates, so its replay finds the same object."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return f"{prefix}_{_encode(int.from_bytes(digest[:17], 'big') >> 6)}"
