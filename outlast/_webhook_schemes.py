"""How each provider signs a webhook, checked on the raw body bytes in constant time.

``verify(scheme, secrets, headers, body, now, options)`` returns what the request says
once one of ``secrets`` (the current one, and during a rotation's overlap the previous
one) signed it: the provider's delivery id and the values an event name template may use.
Anything else raises ``Refused`` with a short reason (never a secret, never the header).

- ``stripe``: ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]``, HMAC-SHA256 of
  ``"<t>.<body>"`` keyed by the whole ``whsec_…`` string; the timestamp within the
  tolerance (300 s by default). Delivery id: the body's ``id`` (``evt_…``).
- ``github``: ``X-Hub-Signature-256: sha256=<hex>``, HMAC-SHA256 of the body; delivery id
  ``X-GitHub-Delivery``; ``{event}`` is ``X-GitHub-Event``. GitHub signs no timestamp.
- ``standard`` (Standard Webhooks, Svix): ``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature: v1,<base64> [v1,<base64> …]`` (or the ``svix-`` twins),
  HMAC-SHA256 of ``"<id>.<timestamp>.<body>"`` keyed by the base64 after ``whsec_``.
- ``hmac-sha256``: one header (``X-Signature`` unless configured) holding the HMAC of the
  body in hex or base64, after an optional prefix such as ``sha256=``; the delivery id from
  a configured header, else the body's SHA-256 (an identical body is the same delivery).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SCHEMES = ("stripe", "github", "standard", "hmac-sha256")
DEFAULT_TOLERANCE = 300.0
MAX_SIGNATURES = 8  # signatures tried per request: bounds the work a forged header costs


class Refused(Exception):
    """The request is not signed by this endpoint's secret (or is stale, or unsigned)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Verified:
    delivery_id: str | None  # None: the body's own id (read once it is parsed)
    values: dict[str, str] = field(default_factory=dict)  # for the name template


def _mac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _any_equal(expected: Sequence[bytes], given: Sequence[bytes]) -> bool:
    """Constant time per comparison; every pair is compared (no early exit on a match)."""
    found = False
    for e in expected:
        for g in given:
            found |= hmac.compare_digest(e, g)
    return found


def _fresh(stamp: str, now: float, tolerance: float) -> None:
    try:
        ts = int(stamp)
    except ValueError:
        raise Refused("the timestamp is not a number") from None
    if abs(now - ts) > tolerance:
        raise Refused("the timestamp is outside the tolerance")


def _hex(values: Sequence[str]) -> list[bytes]:
    out = []
    for v in values[:MAX_SIGNATURES]:
        try:
            out.append(bytes.fromhex(v.strip()))
        except ValueError:
            continue
    return out


def _b64(values: Sequence[str]) -> list[bytes]:
    out = []
    for v in values[:MAX_SIGNATURES]:
        try:
            out.append(base64.b64decode(v.strip(), validate=True))
        except (binascii.Error, ValueError):
            continue
    return out


def _header(headers: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = headers.get(name.lower())
        if value:
            return value
    raise Refused(f"the {names[0]} header is missing")


def standard_key(secret: str) -> bytes:
    """A Standard Webhooks secret's key: the base64 after ``whsec_``."""
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a Standard Webhooks secret is whsec_ and base64") from None


def _stripe(secrets: Sequence[str], headers: Mapping[str, str], body: bytes, now: float,
            options: Mapping[str, Any]) -> Verified:
    parts = [p.split("=", 1) for p in _header(headers, "Stripe-Signature").split(",")]
    pairs = [(k.strip(), v.strip()) for k, *rest in parts for v in rest]
    stamps = [v for k, v in pairs if k == "t"]
    if len(stamps) != 1:
        raise Refused("the Stripe-Signature header has no timestamp")
    given = _hex([v for k, v in pairs if k == "v1"])
    if not given:
        raise Refused("the Stripe-Signature header has no v1 signature")
    expected = [_mac(s.encode(), stamps[0].encode() + b"." + body) for s in secrets]
    if not _any_equal(expected, given):
        raise Refused("the signature does not match")
    _fresh(stamps[0], now, float(options.get("tolerance", DEFAULT_TOLERANCE)))
    return Verified(None)


def _github(secrets: Sequence[str], headers: Mapping[str, str], body: bytes, now: float,
            options: Mapping[str, Any]) -> Verified:
    raw = _header(headers, "X-Hub-Signature-256")
    if not raw.startswith("sha256="):
        raise Refused("the X-Hub-Signature-256 header is not sha256=<hex>")
    given = _hex([raw.removeprefix("sha256=")])
    if not _any_equal([_mac(s.encode(), body) for s in secrets], given):
        raise Refused("the signature does not match")
    delivery = _header(headers, "X-GitHub-Delivery")
    return Verified(delivery, {"event": _header(headers, "X-GitHub-Event")})


def _standard(secrets: Sequence[str], headers: Mapping[str, str], body: bytes, now: float,
              options: Mapping[str, Any]) -> Verified:
    msg_id = _header(headers, "webhook-id", "svix-id")
    stamp = _header(headers, "webhook-timestamp", "svix-timestamp")
    raw = _header(headers, "webhook-signature", "svix-signature")
    given = _b64([p.split(",", 1)[1] for p in raw.split() if p.startswith("v1,")])
    if not given:
        raise Refused("the webhook-signature header has no v1 signature")
    content = msg_id.encode() + b"." + stamp.encode() + b"." + body
    if not _any_equal([_mac(standard_key(s), content) for s in secrets], given):
        raise Refused("the signature does not match")
    _fresh(stamp, now, float(options.get("tolerance", DEFAULT_TOLERANCE)))
    return Verified(msg_id)


def _hmac(secrets: Sequence[str], headers: Mapping[str, str], body: bytes, now: float,
          options: Mapping[str, Any]) -> Verified:
    name = str(options.get("header") or "X-Signature")
    raw = _header(headers, name)
    prefix = str(options.get("prefix") or "")
    if prefix and not raw.startswith(prefix):
        raise Refused(f"the {name} header does not start with {prefix!r}")
    value = raw[len(prefix):]
    given = _b64([value]) if options.get("encoding") == "base64" else _hex([value])
    if not _any_equal([_mac(s.encode(), body) for s in secrets], given):
        raise Refused("the signature does not match")
    id_header = options.get("id_header")
    delivery = (_header(headers, str(id_header)) if id_header
                else "sha256:" + hashlib.sha256(body).hexdigest())
    return Verified(delivery)


_VERIFY = {"stripe": _stripe, "github": _github, "standard": _standard, "hmac-sha256": _hmac}


def verify(scheme: str, secrets: Sequence[str], headers: Mapping[str, str], body: bytes,
           now: float, options: Mapping[str, Any]) -> Verified:
    """Check the request against each secret; ``headers`` keyed in lower case."""
    return _VERIFY[scheme](secrets, headers, body, now, options)
