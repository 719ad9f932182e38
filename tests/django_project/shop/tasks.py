"""Found by outlast.contrib.django's autodiscovery (this app is in INSTALLED_APPS)."""

from __future__ import annotations

from outlast import step, task


@task(id="django-ship")
async def ship(payload: dict[str, str]) -> str:
    return str(await step.run("ship", lambda: f"shipped {payload['number']}"))
