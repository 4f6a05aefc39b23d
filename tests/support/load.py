"""A small load generator for tests: closed loop (to measure capacity) and open loop (a fixed
arrival rate whatever the server does, as real traffic arrives), counting outcomes."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from recsys_client import RecsysClientError

Call = Callable[[int], Awaitable[object]]


@dataclass
class Outcomes:
    seconds: float
    codes: Counter[str] = field(default_factory=Counter)
    # Latency of every call by outcome code, in seconds.
    latencies: dict[str, list[float]] = field(default_factory=dict)

    def record(self, code: str, latency: float) -> None:
        self.codes[code] += 1
        self.latencies.setdefault(code, []).append(latency)

    @property
    def goodput(self) -> float:
        """Successful answers per second."""
        return self.codes["OK"] / self.seconds

    def quantile(self, code: str, share: float) -> float:
        values = sorted(self.latencies.get(code, []))
        return values[min(len(values) - 1, int(share * len(values)))] if values else 0.0


async def _timed(call: Call, number: int, outcomes: Outcomes) -> None:
    started = time.perf_counter()
    try:
        await call(number)
        code = "OK"
    except RecsysClientError as error:
        code = error.code.name
    outcomes.record(code, time.perf_counter() - started)


async def closed_loop(call: Call, *, workers: int, seconds: float) -> Outcomes:
    """`workers` callers, each calling again as soon as its answer arrives."""
    outcomes = Outcomes(seconds)
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def worker() -> None:
        while time.perf_counter() < deadline:
            await _timed(call, next(counter), outcomes)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return outcomes


async def open_loop(call: Call, *, rate: float, seconds: float) -> Outcomes:
    """Calls started at `rate` per second for `seconds`, not waiting for answers."""
    outcomes = Outcomes(seconds)
    started = time.perf_counter()
    tasks = []
    total = int(rate * seconds)
    for number in range(total):
        delay = started + number / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_timed(call, number, outcomes)))
    await asyncio.gather(*tasks)
    return outcomes
