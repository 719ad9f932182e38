"""Control-flow signals that unwind task code. Not errors: BaseException on purpose."""

from __future__ import annotations


class _Signal(BaseException):
    pass


class LeaseLost(_Signal):
    """This worker no longer holds the run; nothing more may be committed for it."""
