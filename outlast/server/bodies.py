"""Batch request bodies: read under a byte limit as they stream in, then parsed and
validated off the event loop, in chunks.

FastAPI reads, parses and validates a declared body model on the event loop before a
``def`` endpoint goes to the thread pool. For a batch of 100,000 items that held the loop
for seconds, and every other request (health, triggers) waited behind it. The batch
routes therefore take the raw request: ``read_limited`` collects the body on the loop (a
cheap append per chunk, refused with 413 as soon as it passes ``OUTLAST_MAX_BATCH_BYTES``,
so memory is bounded by the limit), and the parsing, validation and insert run in a
worker thread. Validation goes a few hundred items at a time: pydantic validates in Rust
holding the GIL, and one call over every item would stall the loop as surely as running
it there. The insert stays one transaction: all items or none.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import orjson
import pydantic
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from .._config import settings
from .._errors import PayloadTooLarge

M = TypeVar("M", bound=pydantic.BaseModel)

MAX_BATCH_ITEMS = 100_000
_CHUNK = 500  # items per validation call: about a millisecond of GIL each


def batch_limit() -> int:
    return settings().max_batch_bytes


def too_large_message(limit: int) -> str:
    return f"the request body is over {limit} bytes (OUTLAST_MAX_BATCH_BYTES)"


async def read_limited(request: Request) -> bytearray:
    """The body, or 413 once more than the batch limit has arrived: the rest is never read."""
    limit = batch_limit()
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise PayloadTooLarge(too_large_message(limit), field="body")
        body += chunk
    return body


def _invalid(errors: list[Any], *loc: str | int) -> RequestValidationError:
    """pydantic's errors, located as FastAPI locates a body's (``body``, field, …)."""
    return RequestValidationError(
        [{**e, "loc": ("body", *loc, *e.get("loc", ()))} for e in errors]
    )


def batch_items(raw: bytes | bytearray, envelope: type[M], item: type[pydantic.BaseModel]
                ) -> list[Any]:
    """The validated ``items`` of a ``{"items": [...]}`` body. Errors name the item
    (``items[2345].options.delay``) as a whole-body validation would, and the first
    invalid chunk ends the validation."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # Python's json also reads NaN and Infinity, as FastAPI does for every other body:
        # such a number then fails validation naming its field, not the whole body.
        try:
            data = json.loads(raw)
        except ValueError:
            raise _invalid([{"type": "json_invalid", "msg": "JSON decode error", "loc": ()}]
                           ) from None
    items = data.get("items") if isinstance(data, dict) else None
    try:
        # The envelope without its items: every other field, and a missing or mistyped
        # list, get pydantic's own error.
        envelope.model_validate({**data, "items": []} if isinstance(items, list) else data)
    except pydantic.ValidationError as exc:
        raise _invalid(exc.errors()) from None
    assert isinstance(items, list)
    if len(items) > MAX_BATCH_ITEMS:
        raise _invalid([{"type": "too_long", "loc": (),
                         "msg": f"List should have at most {MAX_BATCH_ITEMS} items after "
                                f"validation, not {len(items)}"}], "items")
    adapter = pydantic.TypeAdapter(list[item])  # type: ignore[valid-type]
    out: list[Any] = []
    for start in range(0, len(items), _CHUNK):
        try:
            out.extend(adapter.validate_python(items[start:start + _CHUNK]))
        except pydantic.ValidationError as exc:
            shifted = [{**e, "loc": (_shift(e["loc"][0], start), *e["loc"][1:])}
                       for e in exc.errors()]
            raise _invalid(shifted, "items") from None
    return out


def parse_body(raw: bytes, model: type[M]) -> M:
    """A small JSON body validated into ``model`` straight from its bytes (pydantic's
    parser), with FastAPI's errors for a body it would have parsed itself: 422, located
    under ``body``. An empty body is a missing one."""
    if not raw:
        raise _invalid([{"type": "missing", "msg": "Field required", "loc": (),
                         "input": None}])
    try:
        return model.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        errors = exc.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            try:  # NaN or Infinity: Python's json reads them, as FastAPI does
                data = json.loads(raw)
            except ValueError:
                raise _invalid([{"type": "json_invalid", "msg": "JSON decode error",
                                 "loc": ()}]) from None
            try:
                return model.model_validate(data)
            except pydantic.ValidationError as again:
                errors = again.errors()
        raise _invalid(errors) from None


def _shift(position: int | str, by: int) -> int | str:
    return position + by if isinstance(position, int) else position


def json_response(content: Any) -> Response:
    """A JSON response serialized here (in the worker thread), not by FastAPI on the loop."""
    if isinstance(content, pydantic.BaseModel):
        return Response(content.model_dump_json(), media_type="application/json")
    return Response(orjson.dumps(content), media_type="application/json")


def documented_body(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the JSON body of a route that reads the raw
    request, so the OpenAPI document (and clients generated from it) still show it. The
    schema is inlined: its ``$defs`` would not resolve inside the OpenAPI document."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": inline(schema)}}}}
