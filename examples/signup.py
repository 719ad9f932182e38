"""Multi-step with intermediate state: charge card → provision account → welcome email.

The accounts service times out the first time (see ``fake_services``), so the first
attempt fails after the card was charged. The run is retried per its ``Retry`` policy;
the new attempt replays ``charge-card`` from the journal (C2: a committed step never runs
again) and runs ``provision-account`` again, which now succeeds.

And if the charge itself had to run twice (the process died after Stripe answered but
before the step's result was committed, C3), the payment API would still charge once:
the step passes ``step.idempotency_key()``, which is the same on every attempt.

Try it::

    outlast trigger signup --payload '{"email": "ada@example.com"}' --wait
    outlast runs show <run id>        # attempt 1 failed in provision-account; attempt 2 completed
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from outlast import Retry, logger, step, task

from . import fake_services

PRICES = {"starter": 900, "pro": 2900}


class Signup(BaseModel):
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    plan: Literal["starter", "pro"] = "pro"
    organization_id: str = "org_demo"  # tenant context travels in the payload, never ambient


class Charge(BaseModel):
    id: str
    amount_cents: int


class Account(BaseModel):
    id: str
    plan: str


class SignupResult(BaseModel):
    charge_id: str
    account_id: str
    welcome_message_id: str


def charge_card(email: str, amount_cents: int) -> Charge:
    # The key is "<run id>:charge-card": stable across retries, so the payment API
    # recognises a repeated request and returns the first charge instead of a new one.
    response = fake_services.charge(email, amount_cents, idempotency_key=step.idempotency_key())
    return Charge(id=response["id"], amount_cents=response["amount_cents"])


def provision_account(email: str, plan: str, organization_id: str) -> Account:
    response = fake_services.provision_account(email, plan, organization_id)
    return Account(id=response["id"], plan=response["plan"])


def send_welcome_email(email: str, account_id: str) -> str:
    return fake_services.send_email(
        email,
        "Welcome aboard",
        f"Your account {account_id} is ready.",
        idempotency_key=step.idempotency_key(),
    )


@task(id="signup", retry=Retry(max_attempts=4, factor=2.0, min_delay=1.0, max_delay=10.0))
async def signup(payload: Signup) -> SignupResult:
    charge = await step.run("charge-card", charge_card, payload.email, PRICES[payload.plan])
    account = await step.run(
        "provision-account", provision_account, payload.email, payload.plan,
        payload.organization_id,
    )
    message_id = await step.run("send-welcome-email", send_welcome_email, payload.email,
                                account.id)
    logger.info("customer signed up", email=payload.email, account=account.id, charge=charge.id)
    return SignupResult(charge_id=charge.id, account_id=account.id, welcome_message_id=message_id)
