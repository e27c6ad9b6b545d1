"""Nothing remote under a lock: a call to another service while the caller holds a database
transaction open is a programming error, refused before it leaves the process.

Row locks taken in the transaction (a booked slot, a patient being merged) would be held for as
long as the other service takes, and its outage would then stall every caller queued behind them.
Ask first, then open one short transaction; what others must learn of afterwards goes through the
outbox. The server runtime marks its transactions with `no_remote_calls`; the SDK checks every
outbound call with `check`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

_held: contextvars.ContextVar[str | None] = contextvars.ContextVar("his_no_remote", default=None)


class RemoteCallUnderLock(RuntimeError):
    """An outbound call was made while a database transaction was open (a bug in the caller)."""


@contextmanager
def no_remote_calls(why: str) -> Iterator[None]:
    """Inside this block every outbound call raises RemoteCallUnderLock (`why` says what is
    held, for the message)."""
    token = _held.set(why)
    try:
        yield
    finally:
        _held.reset(token)


def check(method: str) -> None:
    """Raise RemoteCallUnderLock if `method` is being called inside `no_remote_calls`."""
    why = _held.get()
    if why is not None:
        raise RemoteCallUnderLock(f"{method} called while {why}: ask first, then open it")
