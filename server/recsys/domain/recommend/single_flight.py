"""Single flight: concurrent identical requests share one run (seed: a burst of requests for
one user must not run the pipeline once per request)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[Hashable, asyncio.Future[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The result of `work()`, run once for every caller that asks while it runs; and
        whether this caller shared another's run. A caller that gives up (cancelled) does not
        cancel the run for the others; the run ends with the first caller's deadline."""
        flight = self._flights.get(key)
        shared = flight is not None
        if flight is None:
            flight = asyncio.ensure_future(work())
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._land(key, done))
        return await asyncio.shield(flight), shared

    def _land(self, key: Hashable, flight: asyncio.Future[T]) -> None:
        self._flights.pop(key, None)
        if not flight.cancelled():
            flight.exception()  # retrieved here too, in case every caller gave up
