"""The README's examples, tested the way an app's own suite would test them: with
``outlast.testing``'s ``outlast_env`` fixture (docs/how-to/testing.md shows these tests).

Each test runs on SQLite and on PostgreSQL here (tests/conftest.py points the plugin's
database at the suite's); in an app they run on SQLite unless ``--outlast-database-url``
names a PostgreSQL server.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from examples import fake_services
from examples.digest import send_digest, send_digest_email
from examples.refund import refund
from examples.signup import signup
from examples.video import render_video
from outlast.runs import RunStatus
from outlast.testing import OutlastEnv

# The worker serves these tasks (every imported task by default, cron ones included).
pytestmark = pytest.mark.outlast(tasks=[signup, refund, render_video, send_digest,
                                        send_digest_email])


@pytest.fixture(autouse=True)
def fake_services_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXAMPLES_DATA_DIR", str(tmp_path / "services"))


async def test_signup_charges_once_though_provisioning_times_out(outlast_env: OutlastEnv
                                                                  ) -> None:
    run = await outlast_env.run(signup, {"email": "ada@example.com", "plan": "pro"})

    assert run.status == RunStatus.COMPLETED
    assert run.attempts == 2  # provisioning timed out on attempt 1 (the fake always does)
    assert run.steps == ["charge-card", "provision-account", "send-welcome-email"]
    # The charge committed on attempt 1 and was replayed from the journal on attempt 2.
    assert run.step_runs == {"charge-card": 1, "provision-account": 2, "send-welcome-email": 1}
    assert len(fake_services.charges("ada@example.com")) == 1


async def test_signup_survives_a_failing_email_provider(outlast_env: OutlastEnv) -> None:
    outlast_env.fail_next("send-welcome-email", ConnectionError("SMTP 421"), times=2)

    run = await outlast_env.run(signup, {"email": "bob@example.com"})

    assert run.status == RunStatus.COMPLETED
    assert run.attempts == 4  # provisioning's timeout, then two email failures
    assert run.times_ran("charge-card") == 1
    assert run.times_ran("send-welcome-email") == 3
    assert "SMTP 421" in run.attempt_errors[-1]


async def test_refund_waits_for_approval_then_refunds_once(outlast_env: OutlastEnv) -> None:
    run = await outlast_env.run(refund, {"order_id": "ord_1", "amount_cents": 4200})
    assert run.status == RunStatus.WAITING
    assert run.metadata["approval_token"] == run.token
    assert [m["token_id"] for m in fake_services.admin_inbox()] == [run.token]

    await outlast_env.complete_token(run, {"approved": True, "by": "ana"})

    assert run.status == RunStatus.COMPLETED
    assert run.output["status"] == "refunded" and run.output["decided_by"] == "ana"
    assert len(fake_services.refunds("ord_1")) == 1


async def test_refund_expires_when_nobody_answers_in_three_days(outlast_env: OutlastEnv
                                                                ) -> None:
    run = await outlast_env.run(refund, {"order_id": "ord_2", "amount_cents": 990})

    await outlast_env.advance(timedelta(days=3) - timedelta(seconds=1))
    assert run.status == RunStatus.WAITING
    await outlast_env.advance(timedelta(seconds=1))

    assert run.status == RunStatus.COMPLETED
    assert run.output["status"] == "expired"
    assert fake_services.refunds("ord_2") == []


async def test_video_is_published_when_the_renderer_calls_back(outlast_env: OutlastEnv
                                                              ) -> None:
    run = await outlast_env.run(render_video, {"video_id": "vid_1"})
    assert run.status == RunStatus.WAITING

    await outlast_env.complete_token(
        run, {"status": "done", "url": "https://render.example.com/vid_1.mp4"}
    )

    assert run.status == RunStatus.COMPLETED
    assert run.steps == ["submit-to-partner", "publish"]


async def test_video_fails_clearly_when_the_renderer_gives_up(outlast_env: OutlastEnv) -> None:
    run = await outlast_env.run(render_video, {"video_id": "vid_2"})

    await outlast_env.complete_token(run, {"status": "error", "reason": "corrupt input"})

    assert run.status == RunStatus.FAILED
    assert run.attempts == 1  # AbortRun: no retry
    assert run.error is not None and "could not render vid_2" in run.error["message"]


async def test_digest_fans_out_one_email_per_user_and_retries_the_503s(
    outlast_env: OutlastEnv,
) -> None:
    # The children run inline: env.run returns when the parent has all their results,
    # their retries' backoffs crossed on the fake clock.
    run = await outlast_env.run(send_digest, {"users": 40, "week": "2026-W01"})

    assert run.status == RunStatus.COMPLETED
    assert run.output == {"week": "2026-W01", "sent": 40, "failed_user_ids": []}
    children = run.children
    assert len(children) == 40
    assert all(c.status == RunStatus.COMPLETED for c in children)
    assert any(c.attempts > 1 for c in children), "the fake provider answers some 503s"
    assert len(fake_services.sent_emails("Your digest for 2026-W01")) == 40


def test_the_testing_guide_shows_these_tests_as_they_are() -> None:
    """docs/how-to/testing.md's test functions are this module's, character for character."""
    guide = (Path(__file__).parent.parent / "docs" / "how-to" / "testing.md").read_text()
    source = Path(__file__).read_text()
    blocks = re.findall(r"```python\n(.*?)```", guide, re.S)
    shown = [b for b in blocks if b.startswith("async def test_")]
    assert len(shown) >= 4
    for block in shown:
        for function in re.split(r"\n\n\n", block.strip()):
            assert function in source, f"the guide's test is not in this module:\n{function}"
