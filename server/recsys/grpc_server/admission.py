"""Load shedding: a bounded number of calls run at once, a bounded queue waits for a slot, and
a call that cannot finish within its deadline is refused at once instead of timing out after
it used the server (seed "Flash Sale": above capacity, goodput must stay at its peak).

Admission, per call:
1. Queue full: refused.
2. The caller's remaining time is shorter than the expected wait plus the expected service
   time (moving averages of recent calls): refused, since it would only end DEADLINE_EXCEEDED
   after taking a slot another call could have used.
3. Otherwise it waits for a slot, at most its remaining time less the expected service time.

A refusal is `UNAVAILABLE` with reason OVERLOADED and a retry-after hint (RetryInfo and gRPC's
`grpc-retry-pushback-ms`), distinct from the rate limit's RESOURCE_EXHAUSTED + RATE_LIMITED:
the client library retries it with jittered back-off within the caller's deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from recsys.deadlines import remaining_seconds
from recsys.errors import Unavailable

OVERLOADED = "OVERLOADED"


class Overloaded(Unavailable):
    """Refused by admission control; `retry_after_seconds` is the hint sent to the caller."""

    default_reason = OVERLOADED

    def __init__(self, message: str, *, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class AdmissionController:
    def __init__(
        self,
        *,
        max_in_flight: int,
        max_queue: int,
        retry_after_seconds: float = 0.1,
        reserve_seconds: float = 0.01,
        smoothing: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_in_flight < 1 or max_queue < 0:
            raise ValueError("max_in_flight must be at least 1 and max_queue at least 0")
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.retry_after_seconds = retry_after_seconds
        # Kept back from the caller's deadline so the refusal itself arrives in time.
        self.reserve_seconds = reserve_seconds
        self.smoothing = smoothing
        self._clock = clock
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight = 0
        self._waiting = 0
        # Moving averages, in seconds: how long a call holds a slot, and how long one waits.
        self.service_seconds = 0.0
        self.wait_seconds = 0.0
        self.refused = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return self._waiting

    def _refuse(self, why: str) -> Overloaded:
        self.refused += 1
        return Overloaded(
            f"the server is overloaded ({why}); retry shortly",
            retry_after_seconds=self.retry_after_seconds,
        )

    def _average(self, current: float, sample: float) -> float:
        return sample if current == 0.0 else current + self.smoothing * (sample - current)

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Holds a slot for the body, or raises Overloaded at once."""
        remaining = remaining_seconds()
        if self._in_flight >= self.max_in_flight:
            if self._waiting >= self.max_queue:
                raise self._refuse("queue full")
            if remaining is not None and remaining < self.wait_seconds + self.service_seconds:
                raise self._refuse("the call could not finish before its deadline")
        started = self._clock()
        self._waiting += 1
        try:
            budget = (
                None
                if remaining is None
                else remaining - self.service_seconds - self.reserve_seconds
            )
            if budget is not None and budget <= 0:
                raise self._refuse("the call could not finish before its deadline")
            try:
                async with asyncio.timeout(budget):
                    await self._slots.acquire()
            except TimeoutError:
                raise self._refuse("no slot in time") from None
        finally:
            self._waiting -= 1
        admitted = self._clock()
        self.wait_seconds = self._average(self.wait_seconds, admitted - started)
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            self._slots.release()
            self.service_seconds = self._average(self.service_seconds, self._clock() - admitted)
