"""JSON in and out, typed by annotations.

Payloads and outputs are stored as JSON text. Pydantic's TypeAdapter gives one code path
for pydantic models, dataclasses, TypedDicts and plain JSON types: validate on the way in,
dump to JSON bytes, and rebuild the annotated type on the way out (a replayed step
returns a dataclass if its function was annotated to return one).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import typing
import weakref
from collections.abc import Callable
from typing import Any

import orjson
import pydantic
import pydantic_core

from ._errors import SerializationError, ValidationError


@functools.lru_cache(maxsize=1024)
def adapter(tp: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(tp)


def dumps(value: Any) -> str:
    """Plain JSON values (dicts, lists, str, numbers) to text; fast path via orjson."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return to_json(value, Any)


def loads(text: str | bytes | None) -> Any:
    if text is None:
        return None
    return orjson.loads(text)


def plain_text(text: str | None) -> str | None:
    """``text`` as every backend can keep it in a plain-text column (a log or error
    message). PostgreSQL refuses NUL in text, so NUL is written as the six characters
    ``\\u0000``, as JSON writes it, and on SQLite too: both backends read back the same.
    A lone surrogate, which no database can encode, is written as its ``\\udXXX`` escape."""
    if text is None or (text.isascii() and "\x00" not in text):
        return text
    text = text.replace("\x00", "\\u0000")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode()
    return text


def to_json(value: Any, tp: Any = Any) -> str:
    """Serialize a value of type ``tp``; a clear SerializationError if it cannot be stored."""
    try:
        if tp is Any or tp is inspect.Parameter.empty:
            return pydantic_core.to_json(value).decode()
        return adapter(tp).dump_json(value).decode()
    except (pydantic_core.PydanticSerializationError, TypeError, ValueError) as exc:
        raise SerializationError(
            f"cannot store a value of type {type(value).__name__} as JSON: {exc}"
        ) from exc


def from_json(text: str | None, tp: Any = Any) -> Any:
    if text is None:
        return None
    if tp is Any or tp is inspect.Parameter.empty:
        return orjson.loads(text)
    return adapter(tp).validate_json(text)


def validate(value: Any, tp: Any, *, what: str = "payload") -> Any:
    """Validate ``value`` against ``tp``; ValidationError names the first bad field."""
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    try:
        return adapter(tp).validate_python(value)
    except pydantic.ValidationError as exc:
        raise validation_error(exc, what) from None


def validation_error(exc: pydantic.ValidationError, what: str) -> ValidationError:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    field = f"{what}.{loc}" if loc else what
    errors = [
        {"field": ".".join(str(p) for p in e.get("loc", ())) or what, "message": e["msg"]}
        for e in exc.errors()
    ]
    return ValidationError(f"{field}: {first['msg']}", field=field, errors=errors)


# fn -> its return type: resolving string annotations costs more than a step's commit
# share, and step.run asks for every call. Weak, so closures made per call are not kept.
_RETURN_TYPES: weakref.WeakKeyDictionary[Callable[..., Any], Any] = weakref.WeakKeyDictionary()


def return_type(fn: Callable[..., Any]) -> Any:
    """The declared return type of ``fn`` (unwrapping Awaitable for async functions)."""
    try:
        return _RETURN_TYPES[fn]
    except (KeyError, TypeError):
        pass
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        return Any
    tp = hints.get("return", Any)
    with contextlib.suppress(TypeError):  # not weakly referenceable: just not cached
        _RETURN_TYPES[fn] = tp
    return tp


def json_schema(tp: Any) -> dict[str, Any]:
    if tp is Any or tp is inspect.Parameter.empty:
        return {}
    try:
        return adapter(tp).json_schema()
    except Exception:
        return {}
