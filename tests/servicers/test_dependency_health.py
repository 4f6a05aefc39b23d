"""Dependency-aware health on real Redis (through a proxy that cuts it) and PostgreSQL: the
`dependency.<name>` health names and `recsys_dependency_up` follow Redis down and back, while
liveness and readiness stay SERVING (the process answers degraded, by design)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.grpc_server.app import GrpcApplication
from tests.support.world import SharedStores, world_on_shared_stores

pytestmark = pytest.mark.integration

INTERVAL = 0.2
REDIS_DEPENDENCIES = ("dependency.feature_store", "dependency.recommendation_cache")
OTHER_DEPENDENCIES = ("dependency.metadata", "dependency.index_shards")


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[SharedStores]:
    async with world_on_shared_stores(
        tmp_path,
        through_proxy=True,
        redis={"socket_timeout_ms": 500, "connect_timeout_ms": 200},
        features={"store": "redis"},
        recommend={"cache": "redis"},
        rate_limit={"limiter": "redis"},
        health={"dependency_interval_seconds": INTERVAL, "dependency_timeout_seconds": 1.0,
                "dependency_failures_before_down": 2},
    ) as stores:  # fmt: skip
        yield stores


async def statuses(channel: grpc.aio.Channel, names: tuple[str, ...]) -> dict[str, str]:
    stub = health_pb2_grpc.HealthStub(channel)
    found: dict[str, str] = {}
    for name in names:
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
        except grpc.aio.AioRpcError as error:
            found[name] = error.code().name  # NOT_FOUND before the first check
            continue
        found[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return found


async def wait_for(
    channel: grpc.aio.Channel, expected: dict[str, str], *, within: float = 10.0
) -> float:
    """Seconds until every name has its expected status; fails with the last ones seen."""
    started = time.monotonic()
    while True:
        seen = await statuses(channel, tuple(expected))
        if seen == expected:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            pytest.fail(f"after {within} s: {seen}, expected {expected}")
        await asyncio.sleep(INTERVAL / 4)


def gauge(app: GrpcApplication, dependency: str) -> float | None:
    return app.registry.get_sample_value("recsys_dependency_up", {"dependency": dependency})


async def test_cutting_redis_flips_its_dependencies_not_liveness_nor_readiness(
    deployment: SharedStores,
) -> None:
    app, proxy = deployment.app, deployment.proxy
    always = {"liveness": "SERVING", "readiness": "SERVING", "": "SERVING"}
    everything_up = dict.fromkeys(REDIS_DEPENDENCIES + OTHER_DEPENDENCIES, "SERVING")
    async with grpc.aio.insecure_channel(app.address) as channel:
        await wait_for(channel, {**always, **everything_up})
        assert gauge(app, "feature_store") == 1.0

        await proxy.refuse()
        redis_down = dict.fromkeys(REDIS_DEPENDENCIES, "NOT_SERVING")
        down_after = await wait_for(channel, redis_down)
        # Two failed checks in a row, a probe interval apart (plus a loaded machine's slack).
        assert down_after < 10 * INTERVAL + 2.0, down_after
        assert await statuses(channel, tuple(always) + OTHER_DEPENDENCIES) == {
            **always,
            **dict.fromkeys(OTHER_DEPENDENCIES, "SERVING"),
        }
        assert gauge(app, "feature_store") == 0.0
        assert gauge(app, "recommendation_cache") == 0.0
        assert gauge(app, "metadata") == 1.0
        assert app.components is not None
        assert app.components.dependencies.states["feature_store"].last_error

        proxy.heal()
        up_after = await wait_for(channel, {**always, **everything_up})
        assert up_after < 10 * INTERVAL + 2.0, up_after
        assert gauge(app, "feature_store") == 1.0
