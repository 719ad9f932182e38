"""One error shape for every failure: ``{"error": message, "code": stable code,
"field": the bad input}``. ``error`` is a string so the Trigger.dev SDK can show it."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import _errors as e

STATUS = {
    e.ValidationError: 422,
    e.PayloadTooLarge: 413,
    e.UnknownTask: 404,
    e.RunNotFound: 404,
    e.TokenNotFound: 404,
    e.QueueNotFound: 404,
    e.TokenTimedOut: 409,
    e.InvalidState: 409,
    e.SchemaVersionError: 503,
    e.ConfigurationError: 500,
}


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
    return JSONResponse(
        error_body(exc.code, exc.message, field, errors=errors), status_code=status_for(exc)
    )


async def request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errs = exc.errors()
    first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(loc) or None
    message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
    details = [
        {"field": ".".join(str(p) for p in x.get("loc", ()) if p not in ("body", "query", "path")),
         "message": x.get("msg")}
        for x in errs
    ]
    return JSONResponse(
        error_body("validation_error", message, field, errors=details), status_code=422
    )


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
             413: "payload_too_large", 415: "unsupported_media_type"}
    code = codes.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )
