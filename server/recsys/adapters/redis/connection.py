"""Redis clients from settings, key naming and error translation shared by the Redis adapters."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from recsys.errors import DeadlineExceeded, Unavailable
from recsys.settings import RedisSettings

T = TypeVar("T")


def create_client(settings: RedisSettings, *, retries: int = 1) -> aioredis.Redis:
    """redis-py retries a failed call 3 times with up to 10 s of backoff by default; on the
    serving path a dead Redis must fail fast (callers degrade), so one immediate retry at most.
    Writes that must not run twice (counters) pass retries=0: a timed-out call may have run."""
    return aioredis.Redis.from_url(
        settings.url,
        retry=Retry(NoBackoff(), retries=retries),
        socket_timeout=settings.socket_timeout_ms / 1000,
        socket_connect_timeout=settings.connect_timeout_ms / 1000,
        max_connections=settings.max_connections,
        decode_responses=False,
        health_check_interval=30,
    )


class Keys:
    """The seed's key names under a namespace: `<namespace>:user_features:<user>`..."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def user_features(self, user_id: str) -> str:
        return f"{self.namespace}:user_features:{user_id}"

    def user_embedding(self, user_id: str) -> str:
        return f"{self.namespace}:user_embedding:{user_id}"

    def item_features(self, item_id: int) -> str:
        return f"{self.namespace}:item_features:{item_id}"

    def user_recent(self, user_id: str) -> str:
        return f"{self.namespace}:user_recent:{user_id}"

    def default_user_features(self) -> str:
        return f"{self.namespace}:default_user_features"

    def rate_limit(self, user_id: str) -> str:
        return f"{self.namespace}:rate_limit:recommendations:{user_id}"


async def translate(call: Callable[[], Awaitable[T]], what: str) -> T:
    """Runs a Redis call; connection problems become Unavailable, timeouts DeadlineExceeded."""
    try:
        return await call()
    except redis_errors.TimeoutError as error:
        raise DeadlineExceeded(f"redis timed out during {what}") from error
    except (redis_errors.ConnectionError, OSError) as error:
        raise Unavailable(
            f"redis unreachable during {what}: {error}", reason="REDIS_DOWN"
        ) from error
    except redis_errors.RedisError as error:
        raise Unavailable(f"redis failed during {what}: {error}", reason="REDIS_ERROR") from error
