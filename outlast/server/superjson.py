"""Decode superjson packets (what the Trigger.dev SDK sends as application/super+json)
into plain JSON values for Python tasks.

Per type: Date → ISO 8601 string; BigInt → int; undefined → the key is dropped (None in
arrays); Set → list; Map → object when every key is a string, else a list of [key, value]
pairs; RegExp → "/source/flags" string; NaN/Infinity/-Infinity → None (JSON has no such
numbers); Error → {"name", "message"}; URL → string; class/custom instances → their
JSON form unchanged.
"""

from __future__ import annotations

from typing import Any

import orjson

from .._errors import ValidationError

_DROP = object()


def decode(text: str) -> Any:
    try:
        packet = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValidationError("payload is not valid superjson", field="payload") from None
    if not isinstance(packet, dict) or "json" not in packet:
        return packet
    value = packet["json"]
    meta = packet.get("meta") or {}
    annotations = meta.get("values")
    if annotations is None:
        return value
    if isinstance(annotations, list):  # the root value itself is annotated
        return _apply(value, annotations)
    return _walk(value, annotations)


def _walk(value: Any, tree: dict[str, Any]) -> Any:
    for path, annotation in tree.items():
        value = _set_path(value, _split(path), annotation)
    return value


def _split(path: str) -> list[str]:
    parts, cur, i = [], "", 0
    while i < len(path):
        ch = path[i]
        if ch == "\\" and i + 1 < len(path):
            cur += path[i + 1]
            i += 2
            continue
        if ch == ".":
            parts.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    parts.append(cur)
    return parts


def _set_path(root: Any, parts: list[str], annotation: Any) -> Any:
    if not parts or parts == [""]:
        return _apply(root, annotation)
    head, rest = parts[0], parts[1:]
    if isinstance(root, list):
        idx = int(head)
        new = _set_path(root[idx], rest, annotation)
        root[idx] = None if new is _DROP else new
    elif isinstance(root, dict):
        new = _set_path(root.get(head), rest, annotation)
        if new is _DROP:
            root.pop(head, None)
        else:
            root[head] = new
    return root


def _apply(value: Any, annotation: Any) -> Any:
    # An annotation is a type name, [type, nested-tree] for containers, or a tree.
    if isinstance(annotation, dict):
        return _walk(value, annotation)
    if isinstance(annotation, list) and annotation:
        kind = annotation[0]
        nested = annotation[1] if len(annotation) > 1 else None
        if isinstance(kind, list):  # ["class", name] / ["custom", name]
            return value
        if isinstance(nested, dict) and kind not in ("class", "custom"):
            value = _walk(value, nested)
        return _convert(value, kind)
    if isinstance(annotation, str):
        return _convert(value, annotation)
    return value


def _convert(value: Any, kind: str) -> Any:
    if kind == "undefined":
        return _DROP
    if kind == "bigint":
        return int(value)
    if kind == "number":
        return None  # NaN, Infinity, -Infinity
    if kind == "set":
        return list(value)
    if kind == "map":
        pairs = list(value)
        if all(isinstance(k, str) for k, _ in pairs):
            return {k: v for k, v in pairs}
        return [[k, v] for k, v in pairs]
    if kind == "Error" and isinstance(value, dict):
        return {"name": value.get("name", "Error"), "message": value.get("message", "")}
    return value  # Date (ISO string), regexp ("/src/flags"), URL (string), symbols
