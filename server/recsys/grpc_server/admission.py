"""Load shedding: a bounded number of calls run at once, a bounded queue waits for a slot, and
a call that cannot finish within its deadline is refused at once instead of timing out after
it used the server (seed "Flash Sale": above capacity, goodput must stay at its peak).

Admission, per call:
1. Queue full: refused.
2. The caller's remaining time is shorter than the expected wait (the calls ahead of it, served
   `max_in_flight` at a time) plus the expected service time (a moving average of recent
   calls): refused, since it would only end DEADLINE_EXCEEDED after taking a slot another call
   could have used.
3. Otherwise it waits for a slot, at most `max_queue_wait_seconds` (100 ms) and never past its
   remaining time less the expected service time.

A refusal is `UNAVAILABLE` with reason OVERLOADED and a retry-after hint (RetryInfo and gRPC's
`grpc-retry-pushback-ms`), distinct from the rate limit's RESOURCE_EXHAUSTED + RATE_LIMITED:
the client library retries it with jittered back-off within the caller's deadline.

Before that, `CallerLimits` bounds each authenticated caller's calls in flight, so that one
caller holding many calls open keeps the other slots for the others: its next call waits for
one of its own calls to end (in arrival order, at most the queue wait and never past its
deadline), outside the shared queue, else is refused with RESOURCE_EXHAUSTED and reason
CALLER_CONCURRENCY (the caller's own quota: not retried by the client library).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from recsys.deadlines import remaining_seconds
from recsys.errors import ResourceExhausted, Unavailable

OVERLOADED = "OVERLOADED"
CALLER_CONCURRENCY = "CALLER_CONCURRENCY"


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
        max_queue_wait_seconds: float = 0.1,
        retry_after_seconds: float = 0.1,
        reserve_seconds: float = 0.01,
        smoothing: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_in_flight < 1 or max_queue < 0:
            raise ValueError("max_in_flight must be at least 1 and max_queue at least 0")
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        # A refusal must be fast to be useful: no call waits longer than this for a slot.
        self.max_queue_wait_seconds = max_queue_wait_seconds
        self.retry_after_seconds = retry_after_seconds
        # Kept back from the caller's deadline so the refusal itself arrives in time.
        self.reserve_seconds = reserve_seconds
        self.smoothing = smoothing
        self._clock = clock
        # Calls holding a slot, and the waiters in arrival order.
        self._in_flight = 0
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        # Moving average of how long a call holds a slot, in seconds.
        self.service_seconds = 0.0
        self.refused = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return sum(not slot.done() for slot in self._queue)

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
            await self._wait_for_slot(remaining)
        else:
            self._in_flight += 1
        admitted = self._clock()
        try:
            yield
        finally:
            self.service_seconds = self._average(self.service_seconds, self._clock() - admitted)
            self._hand_over()

    async def _wait_for_slot(self, remaining: float | None) -> None:
        """Queues in arrival order; a slot is handed over to the first waiter when a call ends,
        so a newcomer never overtakes the queue and the expected wait holds."""
        if len(self._queue) >= self.max_queue:
            raise self._refuse("queue full")
        # Little's law: the calls ahead leave at about max_in_flight per service time.
        expected_wait = (len(self._queue) + 1) * self.service_seconds / self.max_in_flight
        budget = None if remaining is None else remaining - self.service_seconds
        if budget is not None and budget - self.reserve_seconds < expected_wait:
            raise self._refuse("the call could not finish before its deadline")
        wait = self.max_queue_wait_seconds
        if budget is not None:
            wait = min(wait, budget - self.reserve_seconds)
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(slot)
        try:
            async with asyncio.timeout(wait):
                await slot
        except BaseException as error:
            if slot.done() and not slot.cancelled():
                self._hand_over()  # handed a slot just as it gave up: pass it on
            if isinstance(error, TimeoutError):
                raise self._refuse("no slot in time") from None
            raise
        finally:
            if not slot.done():
                slot.cancel()
            with contextlib.suppress(ValueError):
                self._queue.remove(slot)

    def _hand_over(self) -> None:
        """A call ended: its slot goes to the first live waiter, else back to the pool."""
        while self._queue:
            slot = self._queue.popleft()
            if not slot.done():
                slot.set_result(None)
                return
        self._in_flight -= 1


class CallerLimits:
    """At most `limit` calls in flight per caller; a call over it waits for one of the caller's
    own calls to end, at most `max_wait_seconds` and never past its deadline (less
    `reserve_seconds`), else `ResourceExhausted` (CALLER_CONCURRENCY)."""

    def __init__(
        self,
        *,
        limit: int,
        max_wait_seconds: float = 0.1,
        retry_after_seconds: float = 0.1,
        reserve_seconds: float = 0.01,
        exempt: frozenset[str] = frozenset(),
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        # The platform's own processes (auth.internal_callers): one Recommend replica calls
        # Retrieve and Rank for all its users, and must not be held to one user's share.
        self.exempt = exempt
        self.max_wait_seconds = max_wait_seconds
        self.retry_after_seconds = retry_after_seconds
        self.reserve_seconds = reserve_seconds
        # Only callers with calls in flight or waiting have an entry.
        self._callers: dict[str, _CallerSlots] = {}
        self.refused = 0

    def in_flight(self, caller: str) -> int:
        slots = self._callers.get(caller)
        return 0 if slots is None else slots.in_flight

    @asynccontextmanager
    async def admit(self, caller: str) -> AsyncIterator[None]:
        """Holds one of the caller's slots for the body, or raises ResourceExhausted."""
        if caller in self.exempt:
            yield
            return
        slots = self._callers.get(caller)
        if slots is None:
            slots = self._callers[caller] = _CallerSlots(asyncio.Semaphore(self.limit))
        slots.users += 1
        try:
            if slots.semaphore.locked():
                await self._wait(caller, slots.semaphore)
            else:
                await slots.semaphore.acquire()  # free: returns at once
            slots.in_flight += 1
            try:
                yield
            finally:
                slots.in_flight -= 1
                slots.semaphore.release()
        finally:
            slots.users -= 1
            if slots.users == 0:
                del self._callers[caller]

    async def _wait(self, caller: str, semaphore: asyncio.Semaphore) -> None:
        wait = self.max_wait_seconds
        remaining = remaining_seconds()
        if remaining is not None:
            wait = min(wait, remaining - self.reserve_seconds)
        try:
            if wait <= 0:
                raise TimeoutError
            async with asyncio.timeout(wait):
                await semaphore.acquire()
        except TimeoutError:
            self.refused += 1
            raise ResourceExhausted(
                f"caller {caller} has {self.limit} calls in flight, its limit on this server; "
                "retry once one of them ends",
                retry_after_seconds=self.retry_after_seconds,
                reason=CALLER_CONCURRENCY,
            ) from None


class _CallerSlots:
    """One caller's slots; `users` counts its calls in flight and waiting."""

    __slots__ = ("in_flight", "semaphore", "users")

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self.semaphore = semaphore
        self.in_flight = 0
        self.users = 0
