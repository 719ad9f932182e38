"""The weekly digest, on a schedule: every Monday at 09:00 Paris time, and per tenant.

``cron-weekly-digest`` declares its schedule with the task. A worker (or ``outlast dev``)
serving this module creates the schedule when it starts, updates it when the cron changes,
and deactivates it when ``cron=`` is removed. Each Monday one run starts, however many
workers and servers are up (each slot fires exactly once, C6), and fans out to one email
per user through ``send-digest`` (examples/digest.py), under the emails queue's limits.

``cron-tenant-digest`` has no cron of its own: ``schedule_tenant_digest`` gives each
organization an imperative schedule in its own time zone, with the organization id as
``external_id`` and a deduplication key, so calling it again (on every deploy, on every
settings save) updates that tenant's schedule instead of adding a second one. The run gets
the id back in its payload: tenant context travels in the payload, never ambient.

Try it::

    outlast schedules list                       # the declarative one, with its next run
    outlast schedules next "0 9 * * MON" --tz Europe/Paris -n 3
    python -c "from examples.weekly_digest_schedule import schedule_tenant_digest as s; \\
               s('org_42', 'America/New_York')"
"""

from __future__ import annotations

from outlast import ScheduledPayload, logger, schedules, task
from outlast.store.base import Schedule

from .digest import Digest, DigestResult, send_digest

USERS_PER_DIGEST = 25  # the real digest goes to every user; the example keeps dev snappy


def iso_week(payload: ScheduledPayload) -> str:
    """The slot's ISO week on the schedule's own clock ("2026-W12")."""
    return payload.local_timestamp.strftime("%G-W%V")


@task(id="cron-weekly-digest", cron="0 9 * * MON", timezone="Europe/Paris")
async def weekly_digest(payload: ScheduledPayload) -> DigestResult:
    week = iso_week(payload)
    logger.info("weekly digest", week=week, slot=payload.timestamp.isoformat(),
                previous=payload.last_timestamp.isoformat() if payload.last_timestamp else None)
    result = await send_digest.trigger_and_wait(Digest(week=week, users=USERS_PER_DIGEST))
    if not result.ok:
        raise RuntimeError(f"the digest fan-out failed: {result.error}")
    return result.output


@task(id="cron-tenant-digest")
async def tenant_digest(payload: ScheduledPayload) -> DigestResult:
    organization_id = payload.external_id
    week = iso_week(payload)
    logger.info("tenant digest", organization_id=organization_id, week=week)
    result = await send_digest.trigger_and_wait(
        Digest(week=f"{week} ({organization_id})", users=USERS_PER_DIGEST)
    )
    if not result.ok:
        raise RuntimeError(f"the digest of {organization_id} failed: {result.error}")
    return result.output


def schedule_tenant_digest(
    organization_id: str, timezone: str, cron: str = "0 9 * * MON"
) -> Schedule:
    """Create or update one organization's digest schedule (idempotent per organization)."""
    return schedules.create(
        task=tenant_digest,
        cron=cron,
        timezone=timezone,
        external_id=organization_id,
        deduplication_key=f"tenant-digest:{organization_id}",
    )
