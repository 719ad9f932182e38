"""The examples, as one app: ``outlast dev --app examples.tasks`` loads this module.

Each example lives in its own module and shows one of the five conditions that earn a
job platform (see the README):

- ``examples.invoices``: ``export-invoices``, 1. past the function time wall
- ``examples.signup``: ``signup``, 2. several steps with state in between
- ``examples.digest``: ``send-digest`` and ``send-digest-email``, 3. retries with backoff
  and 4. fan-out under a queue's limits
- ``examples.video``: ``render-video``, 5. a durable pause for a partner's callback
- ``examples.refund``: ``refund``, 5. a durable pause for a human's approval
- ``examples.weekly_digest_schedule``: ``cron-weekly-digest`` and ``cron-tenant-digest``,
  the digest on a cron schedule, once for everyone and once per tenant

The outside services they call are fakes (``examples.fake_services``) that keep their
state in ``.outlast/fake-services.db``.
"""

from __future__ import annotations

from typing import Any

from outlast import Task

from .digest import send_digest, send_digest_email
from .invoices import export_invoices
from .refund import refund
from .signup import signup
from .video import render_video
from .weekly_digest_schedule import tenant_digest, weekly_digest

ALL: dict[str, Task[Any, Any]] = {
    t.id: t
    for t in (export_invoices, signup, send_digest, send_digest_email, render_video, refund,
              weekly_digest, tenant_digest)
}

__all__ = [
    "ALL",
    "export_invoices",
    "refund",
    "render_video",
    "send_digest",
    "send_digest_email",
    "signup",
    "tenant_digest",
    "weekly_digest",
]
