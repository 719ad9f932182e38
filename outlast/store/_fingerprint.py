"""What makes two failures the same failure: a fingerprint over the exception's type, its
message with the parts that vary per run masked (numbers, ids, uuids, hex), and the top
frame of the traceback that is in task code, by file and function, not line (a deploy that
moves a line must not split a group).

Pure functions over a run's stored error (JSON with ``type``, ``message``, ``traceback``);
The store's failure scan calls them (``_sql_alerts.py``); the API shows their result.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from .._serde import loads

# Order matters: a uuid contains hex runs and digits, an id contains digits.
_MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"),
     "<uuid>"),
    # prefixed ids such as run_01J..., cus_Nf3k..., wp_...: a word, an underscore, then
    # a token with at least one digit
    (re.compile(r"\b[A-Za-z]{1,12}_(?=[A-Za-z0-9]*\d)[A-Za-z0-9]{6,}\b"), "<id>"),
    (re.compile(r"\b(?:0x)?(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"),
     "<hex>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
)
_MAX_MESSAGE = 500

# A traceback line naming a frame: '  File "path", line N, in function'
_FRAME = re.compile(r'^\s*File "([^"]+)", line \d+, in (.+)$', re.M)
# Frames that are not the task's own code: outlast itself, the standard library and
# installed packages.
_NOT_TASK_CODE = re.compile(r"(/outlast/|/lib/python3[^/]*/|site-packages|dist-packages|<frozen )")


@dataclass(frozen=True)
class Fingerprint:
    key: str  # 16 hex characters
    exc_type: str
    message: str  # masked
    frame: str  # "file.py:function", or '' when no frame is in task code


def mask(message: str) -> str:
    """The message with numbers, ids, uuids and hex masked, whitespace collapsed."""
    text = " ".join(message.split())
    for pattern, repl in _MASKS:
        text = pattern.sub(repl, text)
    return text[:_MAX_MESSAGE]


def top_task_frame(traceback: str) -> str:
    """The innermost frame of the traceback in task code: ``file.py:function``."""
    frames = _FRAME.findall(traceback)
    for path, function in reversed(frames):
        if not _NOT_TASK_CODE.search(path):
            return f"{path.rsplit('/', 1)[-1]}:{function.strip()}"
    return ""


def fingerprint(error: str | None, status: str = "FAILED") -> Fingerprint:
    """The fingerprint of a run's stored error (``status`` names a run that timed out)."""
    data: Any = None
    if error:
        try:
            data = loads(error)
        except ValueError:
            data = {"message": error}
    if not isinstance(data, dict):
        data = {}
    exc_type = str(data.get("type") or data.get("code") or status.lower())
    if status == "TIMED_OUT" and not data.get("type"):
        exc_type = "TimedOut"
    message = mask(str(data.get("message") or ""))
    frame = top_task_frame(str(data.get("traceback") or ""))
    digest = hashlib.sha256(f"{exc_type}\0{message}\0{frame}".encode()).hexdigest()[:16]
    return Fingerprint(digest, exc_type, message, frame)
