"""The RateLimiter contract on every adapter; under 50 concurrent callers exactly `limit`
requests are admitted per window, and (Redis) no counter key is ever left without a TTL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from recsys.adapters.rate_limit.in_memory import InMemoryRateLimiter
from recsys.ports.rate_limit import RateLimiter
from tests.support.redis_cluster import REDIS_KINDS, redis_client, remove_keys

LIMIT = 100
WINDOW = 60


@pytest.fixture(params=["in_memory", *REDIS_KINDS])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    if request.param == "in_memory":
        yield InMemoryRateLimiter(limit=LIMIT, window_seconds=WINDOW)
        return
    from recsys.adapters.rate_limit.redis import RedisRateLimiter

    client = redis_client(request, request.param)
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    adapter = RedisRateLimiter(client, namespace=namespace, limit=LIMIT, window_seconds=WINDOW)
    adapter.namespace = namespace  # type: ignore[attr-defined]
    try:
        yield adapter
    finally:
        await remove_keys(client, namespace)
        await adapter.close()


async def test_exactly_the_limit_is_admitted_under_concurrency(limiter: RateLimiter) -> None:
    async def caller() -> list[bool]:
        return [(await limiter.hit("alice")).allowed for _ in range(5)]

    results = await asyncio.gather(*(caller() for _ in range(50)))  # 250 requests
    allowed = sum(sum(batch) for batch in results)
    assert allowed == LIMIT
    refused = await limiter.hit("alice")
    assert not refused.allowed
    assert 0 < refused.retry_after_seconds <= WINDOW
    # Another user has a budget of their own.
    fresh = await limiter.hit("bob")
    assert fresh.allowed
    assert fresh.remaining == LIMIT - 1
    namespace = getattr(limiter, "namespace", None)
    if namespace is not None:  # Redis: every key carries a TTL
        client = limiter.client  # type: ignore[attr-defined]
        keys = [key async for key in client.scan_iter(match=f"{namespace}:*")]
        assert len(keys) == 2
        for key in keys:
            assert 0 < await client.ttl(key) <= WINDOW


async def test_reset_forgets_a_user(limiter: RateLimiter) -> None:
    for _ in range(LIMIT + 1):
        await limiter.hit("carol")
    assert await limiter.reset("carol") == 1
    assert (await limiter.hit("carol")).allowed
    assert await limiter.reset("nobody") == 0


async def test_reset_leaves_a_user_whose_id_extends_it_alone(limiter: RateLimiter) -> None:
    for _ in range(3):
        await limiter.hit("a:b")
    await limiter.hit("a")
    assert await limiter.reset("a") == 1
    assert (await limiter.hit("a:b")).remaining == LIMIT - 4  # still counting
    assert (await limiter.hit("a")).remaining == LIMIT - 1  # a fresh window


async def test_in_memory_window_rolls_over() -> None:
    now = [0.0]
    limiter = InMemoryRateLimiter(limit=2, window_seconds=60, clock=lambda: now[0])
    assert [(await limiter.hit("u")).allowed for _ in range(3)] == [True, True, False]
    now[0] = 60.0
    assert (await limiter.hit("u")).allowed
