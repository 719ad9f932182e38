"""``outlast webhooks …`` (create, list, show, delete, rotate): incoming webhook endpoints,
straight on the store; and ``outlast encryption-key``, a new key for OUTLAST_ENCRYPTION_KEY.

A secret goes in with ``--secret`` (or ``--secret-env NAME``, to keep it out of the shell
history) and is never printed: listings show its fingerprint.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from . import _secret_box, _webhooks
from ._alerts import parse_duration
from ._cli_common import _common, _out, _store, _when
from ._webhook_schemes import SCHEMES


def add_commands(sub: Any) -> None:
    p = sub.add_parser("webhooks", help="incoming webhook endpoints (Stripe, GitHub, "
                       "Standard Webhooks, HMAC) that publish events")
    cmds = p.add_subparsers(dest="webhooks_cmd", required=True)
    q = cmds.add_parser("create", help="create an endpoint; prints its URL")
    _common(q)
    q.add_argument("name")
    q.add_argument("--scheme", required=True, choices=SCHEMES)
    _secret_flags(q)
    q.add_argument("--event", help="event name template: stripe.{type}, github.{event} "
                   "(the default per scheme: " + ", ".join(
                       f"{k} {v}" for k, v in _webhooks.DEFAULT_EVENTS.items()) + ")")
    q.add_argument("--tolerance", type=float,
                   help="stripe, standard: timestamp tolerance in seconds (default 300)")
    q.add_argument("--header", help="hmac-sha256: the signature header (default X-Signature)")
    q.add_argument("--encoding", choices=_webhooks.ENCODINGS, help="hmac-sha256 (default hex)")
    q.add_argument("--prefix", help="hmac-sha256: text before the digest, e.g. sha256=")
    q.add_argument("--id-header", help="hmac-sha256: the delivery id header (default: "
                   "the body's SHA-256)")
    q.add_argument("--json", action="store_true")
    q = cmds.add_parser("list", help="endpoints with their URLs (never their secrets)")
    _common(q)
    q.add_argument("--json", action="store_true")
    q = cmds.add_parser("show", help="one endpoint and its last deliveries")
    _common(q)
    q.add_argument("name")
    q.add_argument("--limit", type=int, default=20)
    q.add_argument("--json", action="store_true")
    q = cmds.add_parser("delete", help="delete an endpoint and its delivery records")
    _common(q)
    q.add_argument("name")
    q.add_argument("--json", action="store_true")
    q = cmds.add_parser("rotate", help="a new secret; the old one stays valid for --overlap")
    _common(q)
    q.add_argument("name")
    _secret_flags(q)
    q.add_argument("--overlap", default="24h", help="how long the old secret is still "
                   "accepted: 90s, 30m, 24h, 2d (default 24h)")
    q.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_webhooks)
    k = sub.add_parser("encryption-key", help="print a new key for OUTLAST_ENCRYPTION_KEY")
    k.set_defaults(fn=lambda args: print(_secret_box.new_key()) or 0)


def _secret_flags(q: argparse.ArgumentParser) -> None:
    g = q.add_mutually_exclusive_group(required=True)
    g.add_argument("--secret", help="the provider's signing secret")
    g.add_argument("--secret-env", metavar="NAME",
                   help="read the secret from this environment variable")


def _secret(args: argparse.Namespace) -> str:
    if args.secret_env:
        value = os.environ.get(args.secret_env)
        if not value:
            print(f"error: ${args.secret_env} is not set", file=sys.stderr)
            raise SystemExit(2)
        return value
    return str(args.secret)


def cmd_webhooks(args: argparse.Namespace) -> int:
    store = _store(args)
    env, cmd = args.env, args.webhooks_cmd
    if cmd == "create":
        box = _secret_box.box(args.database_url)
        options = {"tolerance": args.tolerance, "header": args.header,
                   "encoding": args.encoding, "prefix": args.prefix,
                   "id_header": args.id_header}
        e = _webhooks.create(store, box, env, args.name, args.scheme, _secret(args),
                             args.event, options, now=store.now())
        shown = _webhooks.describe(e, store.now())
        _out(args, shown, f"webhook {e.name} ({e.scheme}) publishes {e.event}\n"
             f"URL: {shown['url']}\nsecret fingerprint: {e.fingerprint}")
        return 0
    if cmd == "list":
        now = store.now()
        rows = [_webhooks.describe(e, now) for e in store.list_webhooks(env)]
        _out(args, rows, "\n".join(
            f"{r['name']:<20} {r['scheme']:<12} {r['event']:<24} {r['url']}  "
            f"secret {r['fingerprint']}" for r in rows) or "no webhooks")
        return 0
    if cmd == "rotate":
        box = _secret_box.box(args.database_url)
        overlap = parse_duration(args.overlap, "overlap")
        e = _webhooks.rotate(store, box, env, args.name, _secret(args), overlap,
                             now=store.now())
        shown = _webhooks.describe(e, store.now())
        _out(args, shown, f"webhook {e.name}: secret {e.fingerprint}; the previous one "
             f"({e.previous_fingerprint}) is accepted until {_when(e.previous_until)}")
        return 0
    e = _webhooks.get(store, env, args.name)
    if cmd == "delete":
        store.delete_webhook(env, e.id)
        _out(args, {"id": e.id, "deleted": True}, f"deleted webhook {e.name}")
        return 0
    deliveries = store.webhook_deliveries(env, e.id, args.limit)
    shown = {**_webhooks.describe(e, store.now()),
             "deliveries": [_webhooks.delivery_json(d) for d in deliveries]}
    lines = [f"{e.name} ({e.scheme}) publishes {e.event}", f"URL: {shown['url']}",
             f"secret {e.fingerprint}"
             + (f", previous {shown['previous_fingerprint']} until "
                f"{_when(shown['previous_until'])}" if shown["previous_fingerprint"] else ""),
             f"created {_when(e.created_at)}, rotated {_when(e.rotated_at)}"]
    lines += [f"  {_when(d.received_at)}  {d.delivery_id}  -> {d.event_name} {d.event_id}"
              + (" (duplicate)" if d.duplicate else f" runs {' '.join(d.run_ids) or '-'}")
              for d in deliveries]
    _out(args, shown, "\n".join(lines))
    return 0
