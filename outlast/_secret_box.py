"""Secrets kept encrypted at rest: a small box around Fernet (``cryptography``).

Some secrets cannot be hashed: checking an HMAC signature (an incoming webhook's) needs
the plaintext secret, so it is stored sealed with a key from the configuration and opened
only to sign or verify. (Not ``OUTLAST_SECRET_KEY``: that is the HTTP client's API key.)
The key is ``OUTLAST_ENCRYPTION_KEY`` (a Fernet key: 32 random bytes,
url-safe base64; several, comma separated, to rotate the key itself: the first seals, all
open), else the file named by ``OUTLAST_ENCRYPTION_KEY_FILE``, else, for a SQLite database,
an ``encryption-key`` file beside it (``outlast dev`` creates one). Without a key nothing that
needs one can be created, and the error says how to make one.

A secret is never logged or shown: listings show its ``fingerprint``, an HMAC of the
secret under the box's key, which tells two secrets apart without letting anyone test
guesses against it offline.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from ._errors import ConfigurationError

KEY_FILE = "encryption-key"


class EncryptionKeyMissing(ConfigurationError):
    """No encryption key is configured for secrets at rest: set OUTLAST_ENCRYPTION_KEY (outlast encryption-key prints a new one) or OUTLAST_ENCRYPTION_KEY_FILE."""  # noqa: E501 (one line: it is the message)

    code = "encryption_key_missing"


def new_key() -> str:
    """A fresh key, as OUTLAST_ENCRYPTION_KEY takes it."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


class SecretBox:
    """Seal and open secrets with the configured key(s)."""

    def __init__(self, keys: list[str]) -> None:
        from cryptography.fernet import Fernet, MultiFernet

        if not keys:
            raise EncryptionKeyMissing()
        try:
            fernets = [Fernet(k.strip().encode()) for k in keys]
        except ValueError:
            # Never echo the value: it is the key.
            raise ConfigurationError(
                "OUTLAST_ENCRYPTION_KEY: each key is 32 bytes in url-safe base64 "
                "(44 characters); make one with: outlast encryption-key",
                field="OUTLAST_ENCRYPTION_KEY") from None
        self._box = MultiFernet(fernets)
        self._mac_key = hashlib.sha256(b"outlast-fingerprint:" + keys[0].strip().encode()).digest()

    def seal(self, plaintext: str) -> str:
        return self._box.encrypt(plaintext.encode()).decode()

    def open(self, sealed: str) -> str:
        from cryptography.fernet import InvalidToken

        try:
            return self._box.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise ConfigurationError(
                "a stored secret cannot be opened with the configured OUTLAST_ENCRYPTION_KEY "
                "(was the key changed? keep the old one after the new, comma separated)",
                field="OUTLAST_ENCRYPTION_KEY") from None

    def fingerprint(self, plaintext: str) -> str:
        """A short, keyed digest to tell secrets apart in listings."""
        return hmac.new(self._mac_key, plaintext.encode(), hashlib.sha256).hexdigest()[:12]


def _sqlite_dir(database_url: str | None) -> Path | None:
    if not database_url or not database_url.startswith("sqlite:///"):
        return None
    path = database_url.removeprefix("sqlite:///").split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path).parent


def configured_keys(database_url: str | None = None) -> list[str]:
    """The keys in force (see the module docstring), first the one that seals."""
    raw = os.environ.get("OUTLAST_ENCRYPTION_KEY", "")
    if not raw.strip():
        file = os.environ.get("OUTLAST_ENCRYPTION_KEY_FILE")
        beside = _sqlite_dir(database_url)
        path = Path(file) if file else (beside / KEY_FILE if beside is not None else None)
        if path is not None and path.is_file():
            raw = path.read_text()
    return [k.strip() for k in raw.split(",") if k.strip()]


def box(database_url: str | None = None) -> SecretBox:
    """The box for this configuration; EncryptionKeyMissing without a key."""
    return SecretBox(configured_keys(database_url))


def ensure_dev_key(database_url: str) -> Path | None:
    """``outlast dev``: create the key file beside the SQLite database if no key is
    configured (readable by its owner only); the file's path when it made one."""
    if configured_keys(database_url):
        return None
    folder = _sqlite_dir(database_url)
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_key() + "\n")
    return path
