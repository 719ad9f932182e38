"""The dashboard's actions (POST): cancel, replay, bulk actions over the filtered runs,
queue changes, completing tokens, test triggers, login and the environment switch.

Each runs after the web layer checked the CSRF token and that the form was rendered for
the selected environment; every store call is scoped to that environment. Each ends in
a redirect with a flash message (post/redirect/get), or re-renders its form with the
errors next to the fields.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

from starlette.responses import Response

from ... import _bulk, _serde, _token_buttons
from ..._errors import QueueNotFound, UnknownTask, ValidationError
from ..._trigger import TriggerOptions, prepare_replay, prepare_run
from ...store._bulk_base import BulkAction, BulkFilter
from . import views
from ._filters import RunFilter
from ._web import Ctx

# A dashboard request's share of a bulk action; a larger set goes on from its cursor.
BULK_SECONDS = 10.0
_ENV_NAME = re.compile(r"[A-Za-z0-9][\w.-]{0,63}")


def _json(text: str, name: str) -> Any:
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"{name} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            field=name,
        ) from None


# -- one run --------------------------------------------------------------------------------


def cancel(ctx: Ctx) -> Response:
    run_id = ctx.path_param("run_id")
    run, ended = ctx.store.cancel(ctx.env, run_id)
    if run_id in ended:
        message = ("ok", f"Run {run_id} canceled.")
    elif run.is_final:
        message = ("info", f"Run {run_id} had already ended {run.status}.")
    else:
        message = ("ok", f"Cancel requested: run {run_id} is executing and stops at its next "
                         "checkpoint.")
    return ctx.redirect(f"/runs/{run_id}", message)


def replay(ctx: Ctx) -> Response:
    run_id = ctx.path_param("run_id")
    original = ctx.store.get_run(ctx.env, run_id)
    if original is None:
        return ctx.render("error.html", status=404, title="Run not found",
                          message=f"No run {run_id!r} in environment {ctx.env!r}.")
    text = ctx.field("payload")
    try:
        payload = _json(text, "payload") if "payload" in ctx.form else original.payload
        new = prepare_replay(ctx.store, ctx.env, original, payload)
    except (ValidationError, UnknownTask) as exc:
        return views.run_page(ctx, replay_text=text, replay_error=exc.message, status=422)
    result = ctx.store.trigger([new])[0]
    return ctx.redirect(f"/runs/{result.id}", ("ok", f"Replayed {run_id} as {result.id}."))


# -- bulk over the filtered set -------------------------------------------------------------


def _bulk_filter(ctx: Ctx, f: RunFilter, action: str) -> BulkFilter | None:
    """The filtered set as a bulk filter; None when a cancel's statuses have all ended."""
    kwargs = f.store_kwargs(ctx.store.now())
    if action == "cancel" and kwargs["status"] and not set(kwargs["status"]) & set(
            _bulk.CANCELLABLE):
        return None
    return _bulk.make_filter(action, task=kwargs["task_id"], status=kwargs["status"],
                             tag=kwargs["tag"], queue=kwargs["queue"],
                             created_from=kwargs["created_from"],
                             created_to=kwargs["created_to"], search=kwargs["search"])


def bulk(ctx: Ctx) -> Response:
    """Confirm (the dry-run count and a sample), then act through ``outlast/_bulk.py``:
    the path the API and CLI take, in batches, with no cap. A request acts for at most
    ``BULK_SECONDS``; a bigger set goes on with ``outlast runs bulk resume`` or the
    Continue button, never acting on a run twice."""
    action = _bulk.check_action(ctx.field("action"))
    f = RunFilter.read(ctx.field, ctx.fields)
    back = "/runs?" + f.query(cursor=False)
    resume = ctx.field("bulk")
    if ctx.field("confirm") != "1":
        bf = _bulk_filter(ctx, f, action)
        n = _bulk.count(ctx.store, ctx.env, bf) if bf is not None else 0
        sample = (ctx.store.bulk_sample(ctx.env, bf, 10) if bf is not None and n else [])
        return ctx.render("bulk_confirm.html", active="runs", action=action, filter=f,
                          count=n, runs=sample, back=back)
    if resume:
        bulk_action = _bulk.get(ctx.store, ctx.env, resume)
    else:
        bf = _bulk_filter(ctx, f, action)
        if bf is None:
            return ctx.redirect(back, ("info", "No runs match."))
        bulk_action = _bulk.start(ctx.store, ctx.env, action, bf)
    done = _bulk.run(ctx.store, ctx.env, bulk_action.id, max_seconds=BULK_SECONDS)
    return ctx.redirect(back, _bulk_message(done))


def _bulk_message(b: BulkAction) -> tuple[str, str]:
    if b.action == "cancel":
        text = f"Canceled {b.succeeded} runs" + (
            f"; cancel requested for {b.requested} executing" if b.requested else "")
    else:
        text = f"Replayed {b.succeeded} runs"
    if b.skipped:
        text += f"; skipped {b.skipped}" + (f" ({b.last_error})" if b.last_error else "")
    if not b.done:
        return ("warn", f"{text} so far ({b.processed} of {b.total}): bulk action {b.id} "
                        f"goes on with `outlast runs bulk resume {b.id}`.")
    return ("ok" if not b.skipped else "warn", text + ".")


# -- queues ---------------------------------------------------------------------------------


def _queue_name(ctx: Ctx) -> str:
    name = ctx.field("name")
    if not any(q["name"] == name for q in ctx.store.list_queues(ctx.env)):
        raise QueueNotFound(f"no queue {name!r} in environment {ctx.env!r}", field="name")
    return name


def queue_pause(ctx: Ctx) -> Response:
    name = _queue_name(ctx)
    pause = ctx.field("action") == "pause"
    ctx.store.update_queue(ctx.env, name, paused=pause)
    return ctx.redirect("/queues", ("ok", f"Queue {name} {'paused' if pause else 'resumed'}."))


def queue_limit(ctx: Ctx) -> Response:
    name = _queue_name(ctx)
    raw = ctx.field("limit").strip().lower()
    limit: int | None
    if raw in ("", "none", "off"):
        limit = None
    else:
        try:
            limit = int(raw)
        except ValueError:
            raise ValidationError("the limit is a whole number, or empty for none",
                                  field="limit") from None
        if limit < 0:
            raise ValidationError("the limit is >= 0", field="limit")
    ctx.store.update_queue(ctx.env, name, concurrency_limit=limit)
    shown = "no limit" if limit is None else f"a limit of {limit}"
    return ctx.redirect("/queues", ("ok", f"Queue {name} now has {shown}."))


# -- waitpoint tokens -----------------------------------------------------------------------


def complete_token(ctx: Ctx) -> Response:
    token_id = ctx.field("id")
    preset = ctx.field("preset")
    back = views.safe_next(ctx.field("next") or "/waitpoints")
    before = ctx.store.get_waitpoint(ctx.env, token_id)
    # A button sends the data the token's task set for it (shown next to it), or the
    # default Approve/Reject; "approve"/"reject" are the default buttons' older names.
    buttons = {k.lower(): v for k, v in _token_buttons.of(before).items()}
    if preset.lower() in buttons:
        data = buttons[preset.lower()]
    elif preset:
        raise ValidationError(f"token {token_id} has no button {preset!r}", field="preset")
    else:
        data = _json(ctx.field("data"), "data")
    wp, done = ctx.store.complete_waitpoint(ctx.env, token_id, _serde.to_json(data))
    if done:
        n = len(before.waiting_runs) if before is not None else 0
        text = f"Token {token_id} completed" + (
            f"; {n} waiting run{'s' if n != 1 else ''} resume." if n else ".")
        return ctx.redirect(back, ("ok", text))
    return ctx.redirect(back, ("info", f"Token {token_id} was already {wp.status}: the first "
                                       "completion wins."))


# -- test -----------------------------------------------------------------------------------


def _schema_errors(ctx: Ctx, task_id: str, payload: Any) -> list[str]:
    """Every schema error of the payload (the trigger path reports only the first)."""
    td = ctx.store.get_task(ctx.env, task_id)
    if td is None or not td.payload_schema:
        return []
    import jsonschema

    validator = jsonschema.Draft202012Validator(td.payload_schema)
    out = []
    for e in sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in e.absolute_path)
        out.append(f"{where}: {e.message}" if where else e.message)
    return out[:20]


def test_trigger(ctx: Ctx) -> Response:
    task_id = ctx.field("task")
    text = ctx.field("payload")
    values = {k: ctx.field(k) for k in ("tags", "idempotency_key", "delay")}
    errors: dict[str, list[str]] = {}
    try:
        payload = _json(text, "payload")
    except ValidationError as exc:
        return views.test_page(ctx, task_id=task_id, payload_text=text,
                               errors={"payload": [exc.message]}, values=values, status=422)
    try:
        delay = float(values["delay"]) if values["delay"].strip() else None
        tags = [t.strip() for t in values["tags"].split(",") if t.strip()]
        options = TriggerOptions(idempotency_key=values["idempotency_key"].strip() or None,
                                 tags=tags, delay=delay)
        new = prepare_run(ctx.store, ctx.env, task_id, payload, options)
    except UnknownTask as exc:
        errors["task"] = [exc.message]
    except ValidationError as exc:
        name = (exc.field or "form").split(".")[0].split("[")[0]
        name = name if name in ("payload", "tags", "idempotency_key", "delay") else "form"
        listed = exc.details.get("errors")
        if name == "payload" and isinstance(listed, list) and listed:
            # Checked with the task's own type: pydantic listed every error.
            errors[name] = [f"{e.get('field')}: {e.get('message')}" for e in listed]
        elif name == "payload":
            # Checked against the published schema, which reports the first error only.
            errors[name] = _schema_errors(ctx, task_id, payload) or [exc.message]
        else:
            errors[name] = [exc.message]
    except ValueError:
        errors["delay"] = ["delay is a number of seconds"]
    if errors:
        return views.test_page(ctx, task_id=task_id, payload_text=text, errors=errors,
                               values=values, status=422)
    result = ctx.store.trigger([new])[0]
    note = " (an existing run holds this idempotency key)" if result.is_cached else ""
    return ctx.redirect(f"/runs/{result.id}", ("ok", f"Triggered {task_id}: {result.id}{note}."))


# -- session --------------------------------------------------------------------------------


def login(ctx: Ctx) -> Response:
    if not ctx.app.require_login:
        return ctx.redirect("/runs")
    # Guessing is slowed per client address, without holding a thread: once over the
    # limit an attempt is answered 429 before the password is looked at.
    address = ctx.request.client.host if ctx.request.client else ""
    wait = ctx.app.throttle.wait(address)
    if wait:
        page = views.login_page(
            ctx, error=f"Too many wrong passwords. Try again in {wait} s.", status=429)
        page.headers["Retry-After"] = str(wait)
        return page
    if not ctx.app.signer.check_password(ctx.field("password")):  # constant-time
        ctx.app.throttle.failed(address)
        return views.login_page(ctx, error="Wrong password.", status=401)
    ctx.app.signer.sign_in(ctx.session)
    return ctx.redirect(views.safe_next(ctx.field("next") or "/runs"))


def logout(ctx: Ctx) -> Response:
    ctx.app.signer.sign_out(ctx.session)
    return ctx.redirect("/login" if ctx.app.require_login else "/runs")


def select_env(ctx: Ctx) -> Response:
    name = ctx.field("name").strip()
    if not _ENV_NAME.fullmatch(name):
        raise ValidationError(f"not an environment name: {name!r}", field="name")
    ctx.session.env = name
    ctx.session.dirty = True
    section = urllib.parse.urlsplit(views.safe_next(ctx.field("next") or "/runs")).path
    # Objects of one environment do not exist in another: go to the section's list.
    return ctx.redirect("/" + (section.strip("/").split("/")[0] or "runs"),
                        ("info", f"Environment {name}."))
