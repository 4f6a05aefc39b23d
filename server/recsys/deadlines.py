"""The remaining time of the request being served, for deadlines on outbound calls.

The gRPC deadline interceptor records an absolute deadline (monotonic clock) per request; code
that calls another service asks `outbound_timeout()` for a timeout derived from it, so a
dependency never waits longer than the caller is willing to.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

from recsys.errors import DeadlineExceeded

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "recsys_request_deadline", default=None
)


def remaining_seconds() -> float | None:
    """Seconds left before the current request's deadline; None outside a request."""
    deadline = _deadline.get()
    if deadline is None:
        return None
    return deadline - time.monotonic()


def outbound_timeout(cap_seconds: float, *, reserve_seconds: float = 0.0) -> float:
    """Timeout for one outbound call: at most `cap_seconds`, never past the request deadline.

    `reserve_seconds` is kept back for work after the call (merging, fallbacks). Raises
    DeadlineExceeded when no time is left at all.
    """
    remaining = remaining_seconds()
    if remaining is None:
        return cap_seconds
    available = remaining - reserve_seconds
    if available <= 0:
        raise DeadlineExceeded("the request deadline passed before a dependency could be called")
    return min(cap_seconds, available)


@contextmanager
def request_deadline(seconds_from_now: float) -> Iterator[float]:
    """Sets the current request's deadline for the duration of the block; yields it."""
    deadline = time.monotonic() + seconds_from_now
    token = _deadline.set(deadline)
    try:
        yield deadline
    finally:
        _deadline.reset(token)
