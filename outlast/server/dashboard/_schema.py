"""A starting payload for the Test page, sketched from a task's published JSON schema:
defaults where the schema has them, an empty value of the right type otherwise."""

from __future__ import annotations

import json
from typing import Any

_EMPTY: dict[str, Any] = {
    "string": "",
    "integer": 0,
    "number": 0,
    "boolean": False,
    "array": [],
    "object": {},
    "null": None,
}


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return target if isinstance(target, dict) else {}
    return node


def sketch(node: dict[str, Any], root: dict[str, Any], depth: int = 0) -> Any:
    node = _resolve(node, root)
    if depth > 6:
        return None
    if "default" in node:
        return node["default"]
    if "const" in node:
        return node["const"]
    if node.get("enum"):
        return node["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in node.get(key) or [] if isinstance(o, dict)]
        options = [o for o in options if _resolve(o, root).get("type") != "null"] or options
        if options:
            return sketch(options[0], root, depth + 1)
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in node:
        props = node.get("properties") or {}
        required = node.get("required") or list(props)
        return {
            name: sketch(props[name], root, depth + 1)
            for name in props
            if name in required or "default" in _resolve(props[name], root)
        }
    if kind == "array":
        return []
    return _EMPTY.get(str(kind)) if kind else None


def example_payload(schema: dict[str, Any]) -> str:
    if not schema:
        return "{}"
    return json.dumps(sketch(schema, schema), indent=2)
