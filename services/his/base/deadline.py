"""The deadline of the call being served, so outbound calls never outlive it.

The server's observing interceptor records it for each incoming call; the client SDK reads it and
gives every outbound call at most the time that is left (less a small margin for the reply).
"""

from __future__ import annotations

import contextvars
import time

# Absolute time.monotonic() by which the current incoming call must be answered; None outside one.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "his_deadline", default=None
)


_NO_DEADLINE_S = 24 * 3600.0


def enter(time_remaining: float | None) -> contextvars.Token[float | None]:
    """Record the incoming call's remaining time (None: the caller set no deadline)."""
    # grpc reports "no deadline" as None or as an absurdly distant one, depending on the version.
    if time_remaining is None or time_remaining > _NO_DEADLINE_S:
        return _deadline.set(None)
    return _deadline.set(time.monotonic() + time_remaining)


def leave(token: contextvars.Token[float | None]) -> None:
    """Forget the deadline recorded by `enter`."""
    _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left for the call being served, or None when there is no such deadline."""
    value = _deadline.get()
    return None if value is None else value - time.monotonic()
