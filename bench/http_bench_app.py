"""The no-op task the HTTP benchmark triggers."""

from outlast import task


@task(id="bench-http-noop")
async def noop(payload: dict[str, int]) -> None:
    return None
