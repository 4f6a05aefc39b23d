"""gRPC health of a test server, as a probe sees it."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def health_status(address: str, name: str = "readiness") -> str:
    """SERVING or NOT_SERVING of one health name (an RPC error for an unknown one)."""
    async with grpc.aio.insecure_channel(address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=name), timeout=2
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


async def wait_for_health(
    address: str, expected: str, *, name: str = "readiness", within: float
) -> float:
    """Seconds until `name` reports `expected`; fails with the last status after `within`."""
    started = time.monotonic()
    while (status := await health_status(address, name)) != expected:
        assert time.monotonic() - started < within, f"{name or '(overall)'} stayed {status}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started
