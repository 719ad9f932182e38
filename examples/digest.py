"""Fan-out under a provider's limits: the weekly digest, one child run per user.

``send-digest`` starts one ``send-digest-email`` run per user with
``batch_trigger_and_wait`` (one transaction for the whole batch) and is suspended, holding
no worker, until every child has ended. The children run on the ``emails`` queue: at most
10 execute at once and at most 100 start per second, across all workers (C5).

The email provider answers 503 now and then. The failing child run is retried with
exponential backoff and jitter (about 2 s, 6 s, 18 s, … capped at 5 minutes), on the
platform's clock, without holding a worker in between. The send step passes
``step.idempotency_key()`` to the provider, so a retried send never emails anyone twice.

The real digest goes to 50,000 users (``{"users": 50000}``: about 500 s at 100 starts per
second); the default is 25 so that ``outlast dev`` stays snappy.

Try it::

    outlast trigger send-digest --payload '{"users": 200}' --wait
    outlast queues list          # the emails queue: queued, executing (≤ 10), rate 100/1s
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from outlast import Retry, logger, metadata, queue, step, task

from . import fake_services

emails = queue("emails", concurrency_limit=10, rate_limit=(100, 1.0))


class DigestEmail(BaseModel):
    user_id: int
    week: str


class Digest(BaseModel):
    week: str = "2025-W48"
    users: int = Field(default=25, ge=0, le=100_000)


class DigestResult(BaseModel):
    week: str
    sent: int
    failed_user_ids: list[int]


def render_digest(name: str, week: str) -> str:
    return f"<h1>Hi {name}</h1><p>Here is what happened in {week}.</p>"


def send(to: str, subject: str, html: str) -> str:
    return fake_services.send_email(
        to, subject, html, idempotency_key=step.idempotency_key(), flaky=True
    )


@task(
    id="send-digest-email",
    queue=emails,
    retry=Retry(max_attempts=5, factor=3.0, min_delay=2.0, max_delay=300.0, jitter=True),
)
async def send_digest_email(payload: DigestEmail) -> str:
    user = fake_services.user(payload.user_id)
    html = render_digest(user["name"], payload.week)  # pure, so it needs no step
    return await step.run("send", send, user["email"], f"Your digest for {payload.week}", html)


@task(id="send-digest")
async def send_digest(payload: Digest) -> DigestResult:
    user_ids = list(range(1, payload.users + 1))
    metadata.set("users", len(user_ids))
    results = await send_digest_email.batch_trigger_and_wait(
        [DigestEmail(user_id=u, week=payload.week) for u in user_ids]
    )
    failed = [u for u, r in zip(user_ids, results, strict=True) if not r.ok]
    metadata.set("sent", len(user_ids) - len(failed))
    logger.info("digest sent", week=payload.week, sent=len(user_ids) - len(failed),
                failed=len(failed))
    return DigestResult(week=payload.week, sent=len(user_ids) - len(failed),
                        failed_user_ids=failed)
