"""Steady open-loop load for a drill, from a process of its own (bench/loadgen.py's schedule:
requests start at fixed intended times whatever the platform does; latency from the intended
start), recording per second what clients saw: successes, errors by status code, each
degradation flag, p50/p99, and the latency of refusals (an overload's refusals must be fast).

Flags recorded per answer, besides the Degradation booleans: `degraded` (any flag but
served_from_cache), `shard:N` for each failed shard id, `ranking:CPU_MODEL` /
`ranking:RULE_FALLBACK` when the answer was not ranked by the primary model, and
`features_missing` when a known user (the load asks only those) was answered with default
features or as a cold start."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.loadgen import Histogram, LoadResult, run_open_loop, status_name
from recsys_client import AsyncRecsysClient, ClientOptions

NOT_DEGRADED = {"served_from_cache", "cold_start"}
# How the server refuses work it cannot take: admission control's UNAVAILABLE (OVERLOADED) and
# the per-caller or rate limits' RESOURCE_EXHAUSTED.
REFUSALS = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")


@dataclass(frozen=True)
class Load:
    target: str
    rate_per_second: float
    duration_s: float
    # Wall time (time.time()) at which request 0 is intended to start.
    start_at: float
    users: int = 1000
    first_user: int = 0
    timeout_s: float = 2.0
    # The client library's retries (UNAVAILABLE, with back-off) on: what an application using
    # it sees. Off: every failed attempt counts.
    retry: bool = False
    max_outstanding: int = 512
    limit: int = 20
    connections: int = 4


def flags_of(response: Any) -> list[str]:
    flags = [
        descriptor.name for descriptor, value in response.degradation.ListFields() if value is True
    ]
    flags += [f"shard:{shard}" for shard in response.degradation.failed_shard_ids]
    flags += [f"source:{source}" for source in response.degradation.failed_candidate_sources]
    backend = response.ranking_backend
    if backend in (2, 3):
        flags.append("ranking:CPU_MODEL" if backend == 2 else "ranking:RULE_FALLBACK")
    if response.cold_start:
        flags.append("cold_start")
    if "default_features" in flags or "cold_start" in flags:
        # A known user (the load asks only those) answered without their stored features.
        flags.append("features_missing")
    if any(flag not in NOT_DEGRADED for flag in flags):
        flags.append("degraded")
    return flags


async def _run(load: Load) -> dict[str, Any]:
    options = ClientOptions(target=load.target, timeout_seconds=load.timeout_s)
    if not load.retry:
        options = ClientOptions(target=load.target, timeout_seconds=load.timeout_s, retry=None)
    refusals = Histogram()
    async with contextlib.AsyncExitStack() as stack:
        # Several connections, as an application's pool (or several of its pods) has: the
        # kernel spreads connections, not calls, over the Recommend replicas on the port.
        clients = [
            await stack.enter_async_context(AsyncRecsysClient(options))
            for _ in range(load.connections)
        ]
        for client in clients:
            await client.check_health(timeout=30)

        async def call(number: int) -> Sequence[str]:
            started = time.perf_counter()
            user = f"user{load.first_user + number % load.users}"
            client = clients[number % len(clients)]
            try:
                response = await client.recommend(user, surface="homepage", limit=load.limit)
            except Exception as error:
                if status_name(error) in REFUSALS:
                    refusals.record(time.perf_counter() - started)
                raise
            return flags_of(response)

        await asyncio.sleep(max(0.0, load.start_at - time.time()))
        began = time.time()  # offset 0 of the buckets, whatever start_at said
        result = await run_open_loop(
            call, load.rate_per_second, load.duration_s, 0.0,
            max_outstanding=load.max_outstanding,
        )  # fmt: skip
    return {"result": result.to_dict(), "refusals": refusals.to_dict(), "began": began}


def _child(load: Load, connection: Any) -> None:
    try:
        connection.send(json.dumps(asyncio.run(_run(load))))
    except BaseException as error:  # the parent reports it
        connection.send(json.dumps({"error": repr(error)}))
    finally:
        connection.close()


class Running:
    """A load running in its own process; `result()` waits for it."""

    def __init__(self, load: Load) -> None:
        self.load = load
        context = multiprocessing.get_context("spawn")
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_child, args=(load, send), daemon=True)
        self._process.start()

    def cancel(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join(10)

    def result(self) -> tuple[LoadResult, Histogram, float]:
        """The load's result, its refusals' latencies and the wall time its buckets start at."""
        timeout = self.load.start_at - time.time() + self.load.duration_s + 60
        if not self._receive.poll(max(1.0, timeout)):
            self._process.kill()
            raise RuntimeError("the load generator did not finish")
        data = json.loads(self._receive.recv())
        self._process.join(10)
        if "error" in data:
            raise RuntimeError(f"the load generator failed: {data['error']}")
        return (
            LoadResult.from_dict(data["result"]),
            Histogram.from_dict(data["refusals"]),
            float(data["began"]),
        )


def start(load: Load) -> Running:
    return Running(load)
