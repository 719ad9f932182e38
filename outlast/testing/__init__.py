"""Testing outlast tasks with pytest: an isolated store, a fake clock, an in-process
worker, fault injection and assertions on the journal.

The pytest plugin (``outlast.testing.plugin``) is registered by installing outlast; its
``outlast_env`` fixture gives each test an ``OutlastEnv``::

    async def test_refund_is_issued_once_approved(outlast_env):
        run = await outlast_env.run(refund, {"order_id": "o1", "amount_cents": 4200})
        assert run.status == "WAITING"
        await outlast_env.complete_token(run, {"approved": True, "by": "ana"})
        assert run.output["status"] == "refunded"

See docs/how-to/testing.md.
"""

from __future__ import annotations

from .._clock import FakeClock
from ._env import OutlastEnv
from ._run import TestRun

__all__ = ["FakeClock", "OutlastEnv", "TestRun"]
