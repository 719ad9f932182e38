"""The examples, as one app: ``outlast dev --app examples.tasks`` loads this module.

Each example lives in its own module and shows one of the five conditions that earn a
job platform (see the README):

========================  =====================================  ==========================
module                    task ids                               condition
========================  =====================================  ==========================
``examples.invoices``     ``export-invoices``                    1. past the time wall
``examples.signup``       ``signup``                             2. multi-step state
``examples.digest``       ``send-digest``, ``send-digest-email``  3. retries, 4. fan-out
``examples.video``        ``render-video``                       5. pause for a callback
``examples.refund``       ``refund``                             5. pause for a human
========================  =====================================  ==========================

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

ALL: dict[str, Task[Any, Any]] = {
    t.id: t
    for t in (export_invoices, signup, send_digest, send_digest_email, render_video, refund)
}

__all__ = [
    "ALL",
    "export_invoices",
    "refund",
    "render_video",
    "send_digest",
    "send_digest_email",
    "signup",
]
