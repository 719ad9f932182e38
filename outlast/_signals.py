"""Control-flow signals that unwind task code. Not errors: BaseException on purpose."""

from __future__ import annotations


class _Signal(BaseException):
    pass


class Suspend(_Signal):
    """The run waits on a waitpoint; the attempt ends without a result."""


class LeaseLost(_Signal):
    """This worker no longer holds the run; nothing more may be committed for it."""


class Cancelled(_Signal):
    """The run was cancelled while executing."""
