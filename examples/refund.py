"""Waiting for a human: a refund that needs an admin's approval, with a deadline.

The task creates a waitpoint token with a timeout, asks the admins (the token id is the
"approve" link) and waits. The run is ``WAITING`` meanwhile and costs nothing. An admin
completes the token with ``{"approved": true, "by": "ana"}`` (or ``false``); if nobody
answers before the timeout, the wait returns ``timed_out`` and the task ends with a clear
``expired`` result instead of refunding. The refund itself is a step with an idempotency
key, so it happens once however often the run is retried.

Try it::

    outlast trigger refund --payload '{"order_id": "ord_1001", "amount_cents": 4200}'
    outlast runs show <run id>             # metadata.approval_token is the token id
    outlast tokens complete <token id> --data '{"approved": true, "by": "ana"}'

Add ``"approval_timeout_seconds": 30`` to the payload to watch it expire instead.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from outlast import logger, metadata, step, task, wait

from . import fake_services


class RefundRequest(BaseModel):
    order_id: str
    amount_cents: int = Field(gt=0)
    reason: str = ""
    approval_timeout_seconds: float = Field(default=3 * 24 * 3600, gt=0)  # three days


class RefundResult(BaseModel):
    order_id: str
    status: Literal["refunded", "rejected", "expired"]
    refund_id: str | None = None
    decided_by: str | None = None


def ask_admin(order_id: str, amount_cents: int, reason: str, token_id: str) -> None:
    fake_services.notify_admin(
        token_id,
        f"Approve a refund of {amount_cents / 100:.2f} EUR for order {order_id}?",
        f"Reason: {reason or '-'}. Approve: outlast tokens complete {token_id} "
        "--data '{\"approved\": true, \"by\": \"you\"}'",
    )


def issue_refund(order_id: str, amount_cents: int) -> dict[str, Any]:
    return fake_services.refund(order_id, amount_cents, idempotency_key=step.idempotency_key())


@task(id="refund")
async def refund(payload: RefundRequest) -> RefundResult:
    token = await wait.create_token(timeout=payload.approval_timeout_seconds,
                                    tags=[f"order:{payload.order_id}"])
    metadata.set("approval_token", token.id)
    await step.run("ask-admin", ask_admin, payload.order_id, payload.amount_cents,
                   payload.reason, token.id)
    decision = await wait.for_token(token)
    if decision.timed_out:
        logger.warning("no decision before the deadline; nothing refunded",
                       order=payload.order_id)
        return RefundResult(order_id=payload.order_id, status="expired")
    answer: dict[str, Any] = decision.output if isinstance(decision.output, dict) else {}
    decided_by = str(answer.get("by") or "") or None
    if answer.get("approved") is not True:
        return RefundResult(order_id=payload.order_id, status="rejected", decided_by=decided_by)
    issued = await step.run("issue-refund", issue_refund, payload.order_id,
                            payload.amount_cents)
    logger.info("refund issued", order=payload.order_id, refund=issued["id"])
    return RefundResult(order_id=payload.order_id, status="refunded", refund_id=issued["id"],
                        decided_by=decided_by)
