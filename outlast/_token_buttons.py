"""A waitpoint token's completion buttons in the dashboard: ``{label: data}``, each button
completing the token with its data. Explicit, so a person can see what Approve sends, and
per token, so it sends what the waiting task checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import _serde
from ._errors import ValidationError

DEFAULT: dict[str, Any] = {"Approve": {"approved": True}, "Reject": {"approved": False}}
MAX_BUTTONS = 6
MAX_LABEL = 40


def buttons_json(buttons: Mapping[str, Any] | None, *, in_task: bool = True) -> str | None:
    """Validated ``buttons`` as JSON text for the store (None: the default). They are set
    by the task that creates the token, e.g. ``{"Approve": {"ok": True}, "Reject": {"ok":
    False}}``."""
    if buttons is None:
        return None
    if not in_task:
        raise ValidationError("buttons= is for tokens created inside a task", field="buttons")
    if not isinstance(buttons, Mapping) or not 1 <= len(buttons) <= MAX_BUTTONS:
        raise ValidationError(f"buttons is a mapping of 1 to {MAX_BUTTONS} labels to data",
                              field="buttons")
    for label in buttons:
        if not isinstance(label, str) or not 1 <= len(label.strip()) <= MAX_LABEL:
            raise ValidationError(f"buttons: a label is text of 1 to {MAX_LABEL} characters "
                                  f"(got {label!r})", field="buttons")
    return _serde.to_json(dict(buttons))


def of(token: Any) -> dict[str, Any]:
    """The buttons a token shows."""
    return getattr(token, "buttons", None) or DEFAULT
