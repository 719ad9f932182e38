"""Dashboard sessions: a signed cookie holding the login, the CSRF token, the selected
environment and one flash message.

A login is also kept in the database (``dashboard_sessions``: the SHA-256 of a random
session id the cookie carries), so a logout ends it for good: a copy of the cookie taken
before the logout no longer signs anyone in. Any number of servers against one database
share sessions.

The signing key is derived from a random server secret (kept in the store's settings,
created once) and the dashboard password: changing the password signs everyone out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..._config import settings
from ...store.base import AccessStore

COOKIE = "outlast_dashboard"
MAX_AGE = 7 * 24 * 3600
_SECRET_SETTING = "dashboard.session_secret"


@dataclass
class Session:
    csrf: str
    env: str = "dev"
    auth: bool = False
    issued: float = field(default_factory=time.time)
    flash: tuple[str, str] | None = None
    sid: str | None = None  # the login's id in dashboard_sessions (hashed there)
    dirty: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "csrf": self.csrf,
            "env": self.env,
            "auth": self.auth,
            "sid": self.sid,
            "issued": self.issued,
            "flash": list(self.flash) if self.flash else None,
        }

    def say(self, kind: str, text: str) -> None:
        """Keep a message for the next page (after a redirect)."""
        self.flash = (kind, text)
        self.dirty = True

    def take_flash(self) -> tuple[str, str] | None:
        flash, self.flash = self.flash, None
        if flash is not None:
            self.dirty = True
        return flash

    def check_csrf(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf, str(token))


def new_session() -> Session:
    """A fresh session, in the server's environment (OUTLAST_ENV, default dev)."""
    return Session(csrf=secrets.token_urlsafe(32), env=settings().env, dirty=True)


def _hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs and verifies session cookies (HMAC-SHA256)."""

    def __init__(self, store: AccessStore, password: str | None) -> None:
        self.store = store
        self.password = password or ""
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def key(self) -> bytes:
        # Fetched on first use, not at app creation: the app may be built before the
        # database is migrated.
        with self._lock:
            if self._key is None:
                secret = self.store.set_setting_if_absent(
                    _SECRET_SETTING, secrets.token_hex(32)
                )
                self._key = hmac.new(
                    secret.encode(), b"dashboard-session\x00" + self.password.encode(),
                    hashlib.sha256,
                ).digest()
            return self._key

    def dumps(self, session: Session) -> str:
        body = _b64(json.dumps(session.to_dict(), separators=(",", ":")).encode())
        mac = hmac.new(self.key(), body.encode(), hashlib.sha256).digest()
        return f"{body}.{_b64(mac)}"

    def loads(self, cookie: str | None) -> Session | None:
        if not cookie or "." not in cookie or len(cookie) > 4096:
            return None
        body, _, mac = cookie.partition(".")
        try:
            expected = hmac.new(self.key(), body.encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(expected, _unb64(mac)):
                return None
            data = json.loads(_unb64(body))
        except (ValueError, TypeError):
            return None
        if not isinstance(data, dict) or time.time() - float(data.get("issued", 0)) > MAX_AGE:
            return None
        flash = data.get("flash")
        return Session(
            csrf=str(data.get("csrf") or secrets.token_urlsafe(32)),
            env=str(data.get("env") or "dev"),
            auth=bool(data.get("auth")),
            issued=float(data["issued"]),
            flash=(str(flash[0]), str(flash[1])) if isinstance(flash, list) and len(flash) == 2
            else None,
            sid=str(data["sid"]) if data.get("sid") else None,
        )

    def load(self, cookie: str | None) -> Session:
        """The cookie's session, signed out if its login has ended on the server (logout,
        expiry), or a new one."""
        session = self.loads(cookie)
        if session is None:
            return new_session()
        if session.auth and not (session.sid and self.store.dashboard_session_alive(
                _hash(session.sid))):
            session.auth, session.sid = False, None
            session.csrf = secrets.token_urlsafe(32)
            session.dirty = True
        return session

    def sign_in(self, session: Session) -> None:
        """Start a login: a new session id, kept (hashed) on the server until logout."""
        session.sid = secrets.token_urlsafe(32)
        self.store.create_dashboard_session(_hash(session.sid), self.store.now() + MAX_AGE)
        session.auth = True
        session.csrf = secrets.token_urlsafe(32)  # a new token for the signed-in session
        session.dirty = True

    def sign_out(self, session: Session) -> None:
        if session.sid:
            self.store.end_dashboard_session(_hash(session.sid))
        session.auth, session.sid = False, None
        session.csrf = secrets.token_urlsafe(32)
        session.dirty = True

    def check_password(self, attempt: str) -> bool:
        if not self.password:
            return False
        a = hashlib.sha256(attempt.encode()).digest()
        b = hashlib.sha256(self.password.encode()).digest()
        return hmac.compare_digest(a, b)
