r"""A durable pause for a callback: a partner renders the video and calls us back.

The task creates a waitpoint token, hands the token's callback URL to the partner and
waits for the token. While it waits the run is ``WAITING``: it holds no worker, no queue
slot and no memory, for hours if need be. When the token is completed (the partner's
callback, or anyone with the token id) the run is queued again, replays to the wait and
carries on with the partner's answer. The first completion wins; later ones change
nothing (C7). If no answer comes in time the wait returns ``timed_out`` and the task gives
up with ``AbortRun`` (failed, no retry).

Try it (``outlast dev`` serves the callback URL on http://localhost:8030)::

    outlast trigger render-video --payload '{"video_id": "vid_42"}'
    outlast runs show <run id>        # metadata.callback_url: the URL the partner got
    curl -X POST '<callback_url>' -H 'content-type: application/json' \
         -d '{"status": "done", "url": "https://cdn.example.com/vid_42.mp4"}'

The callback URL needs no API key: it carries a signature of the token id, which is the
credential. ``outlast tokens complete <token id> --data '{...}'`` does the same by hand.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field

from outlast import AbortRun, logger, metadata, step, task, wait

from . import fake_services


class RenderVideo(BaseModel):
    video_id: str
    preset: str = "1080p"
    timeout_hours: float = Field(default=24.0, gt=0)


class RenderResult(BaseModel):
    video_id: str
    url: str


@task(id="render-video")
async def render_video(payload: RenderVideo) -> RenderResult:
    token = await wait.create_token(timeout=timedelta(hours=payload.timeout_hours))
    metadata.set("callback_token", token.id)
    metadata.set("callback_url", token.callback_url)
    job_id = await step.run(
        "submit-to-partner", fake_services.submit_render, payload.video_id, payload.preset,
        token.callback_url,
    )
    logger.info("render submitted; waiting for the partner's callback", job=job_id,
                token=token.id)
    result = await wait.for_token(token)
    if result.timed_out:
        raise AbortRun(f"the partner did not call back within {payload.timeout_hours:g} h")
    answer: dict[str, Any] = result.output if isinstance(result.output, dict) else {}
    if answer.get("status") != "done" or not answer.get("url"):
        raise AbortRun(f"the partner could not render {payload.video_id}: {answer!r}")
    public_url = await step.run("publish", fake_services.publish_video, payload.video_id,
                                answer["url"])
    return RenderResult(video_id=payload.video_id, url=public_url)
