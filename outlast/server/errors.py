"""One error shape for every failure: ``{"error": message, "code": stable code,
"field": the bad input}``. ``error`` is a string so the Trigger.dev SDK can show it."""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .. import _errors as e

STATUS = {
    e.ValidationError: 422,
    e.PayloadTooLarge: 413,
    e.UnknownTask: 404,
    e.RunNotFound: 404,
    e.TokenNotFound: 404,
    e.QueueNotFound: 404,
    e.ScheduleNotFound: 404,
    e.BulkActionNotFound: 404,
    e.EventNotFound: 404,
    e.WebhookNotFound: 404,
    e.RetentionPolicyNotFound: 404,
    e.TokenTimedOut: 409,
    e.InvalidState: 409,
    e.SchemaVersionError: 503,
    e.ConfigurationError: 500,
}


class ErrorBody(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(extra="allow")

    error: str
    code: str
    field: str | None = None
    errors: list[dict[str, Any]] | None = None


def _documented(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# Documented on every authenticated route, so the OpenAPI document tells clients (and
# schemathesis) the shape of each failure, not FastAPI's default {"detail": ...}.
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _documented("The secret key is missing, wrong or revoked"),
    404: _documented("No such object in this key's environment"),
    409: _documented("The object's state forbids this; a retry cannot help"),
    413: _documented("The request body or payload is over the limit"),
    422: _documented("Invalid input; `field` names it"),
}
UNSUPPORTED_MEDIA_TYPE = _documented("The body's content type is not one this route reads")


def no_retry(status: int) -> dict[str, str]:
    """The Trigger.dev SDK retries 408, 409, 429 and 5xx unless told not to; a 4xx from
    outlast is final (a retry cannot help), so say so."""
    return {"x-should-retry": "false"} if 400 <= status < 500 and status not in (408, 429) else {}


def error_body(code: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message, "code": code}
    if field:
        body["field"] = field
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def status_for(exc: e.OutlastError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


async def outlast_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, e.OutlastError)
    field = exc.details.get("field")
    errors = exc.details.get("errors")
    status = status_for(exc)
    return JSONResponse(
        error_body(exc.code, exc.message, field, errors=errors),
        status_code=status,
        headers=no_retry(status),
    )


# pydantic names the member of a union that failed inside the location ("tags",
# "constrained-str"); a client wants the field alone. Wire field names are camelCase.
_UNION_TAG = re.compile(r"^(?:constrained-\w+|function-\w+\[.*\]|\w+\[.*\]|str|int|float|bool|"
                        r"list|dict|none|[A-Z]\w*)$")


def _field(error: Any) -> str:
    """A pydantic error location as the API names fields: ``items[3].options.delay``."""
    if error.get("type") == "json_invalid":
        return "body"  # the location is a character offset, not a field
    out = ""
    for part in error.get("loc", ()):
        if part in ("body", "query", "path", "header") or _UNION_TAG.match(str(part)):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


async def request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errs = exc.errors()
    first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
    field = _field(first) or None
    message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
    details = [{"field": _field(x), "message": x.get("msg")} for x in errs]
    return JSONResponse(
        error_body("validation_error", message, field, errors=details),
        status_code=422,
        headers=no_retry(422),
    )


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:  # FastAPI's answer to a body it cannot parse (not UTF-8 JSON)
        return JSONResponse(
            error_body("validation_error", "body: not a valid JSON document", "body"),
            status_code=422,
            headers=no_retry(422),
        )
    codes = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
             413: "payload_too_large", 415: "unsupported_media_type"}
    code = codes.get(exc.status_code, "http_error")
    headers = {**no_retry(exc.status_code), **(exc.headers or {})}
    if exc.status_code == 405:
        headers["Allow"] = _allowed(request)
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=headers
    )


def refused_classes() -> tuple[type[Exception], ...]:
    """The database drivers' errors that say a value was refused (text it cannot hold, a
    key too long for its index), not that the database is unwell. Input checks (see
    outlast/_limits.py) refuse such values first; these answer 422, not 500, for any
    the checks miss, and the refused transaction wrote nothing."""
    import sqlite3

    classes: list[type[Exception]] = [sqlite3.DataError, sqlite3.IntegrityError]
    try:
        import psycopg
        from psycopg import errors as pg_errors
    except ImportError:  # the postgres extra is not installed: SQLite only
        return tuple(classes)
    classes += [psycopg.DataError, psycopg.IntegrityError, pg_errors.ProgramLimitExceeded]
    return tuple(classes)


async def refused_value(request: Request, exc: Exception) -> JSONResponse:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return JSONResponse(
        error_body("validation_error", f"the database refused a value of this request: {reason}"),
        status_code=422,
        headers=no_retry(422),
    )


def _allowed(request: Request) -> str:
    """Every method the path answers. Starlette's 405 names only the first route matching
    the path, so /api/v1/waitpoints/tokens (GET and POST) would claim to allow one. Asked
    per method through ``matches()``, which works through included routers too."""
    allowed = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.routes):
            allowed.append(method)
    return ", ".join(allowed)
