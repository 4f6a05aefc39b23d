"""Redis clients from settings, key naming and error translation shared by the Redis adapters."""

from __future__ import annotations

import hashlib
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


def user_tag(user_id: str) -> str:
    """The user's part of every per-user key: the first 128 bits of the SHA-256 of the id, in
    hex, as a Redis Cluster hash tag. Fixed length and without `:`, so no key of one user is a
    prefix of another's (ids may contain `:`), ids never appear in key names, and all of a
    user's keys hash to one slot (one DEL, one MULTI). Equal to the hex of the audit log's
    `hashed_subject`, so an operator can find the keys an audit record names."""
    return "{" + hashlib.sha256(user_id.encode()).hexdigest()[:32] + "}"


class Keys:
    """Every key name, under `<namespace>:` (docs/recommend.md lists them). Per-user keys carry
    `user_tag(user_id)` instead of the id."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def user_features(self, user_id: str) -> str:
        return f"{self.namespace}:user_features:{user_tag(user_id)}"

    def user_recent(self, user_id: str) -> str:
        return f"{self.namespace}:user_recent:{user_tag(user_id)}"

    def rate_limit(self, user_id: str) -> str:
        return f"{self.namespace}:rate_limit:recommendations:{user_tag(user_id)}"

    def cached(self, kind: str, user_id: str, surface: str) -> str:
        """A cached answer: `kind` is one of `recsys.ports.cache.KINDS`."""
        return f"{self.namespace}:{kind}:{user_tag(user_id)}:{surface}"

    def cached_surfaces(self, user_id: str) -> str:
        """The set of surfaces the user has cached answers under (erasure reads it)."""
        return f"{self.namespace}:cached_surfaces:{user_tag(user_id)}"

    def item_features(self, item_id: int) -> str:
        return f"{self.namespace}:item_features:{item_id}"

    def default_user_features(self) -> str:
        return f"{self.namespace}:default_user_features"

    def embedding_versions(self) -> str:
        """Hash: embedding version -> how many users hold an embedding of it."""
        return f"{self.namespace}:embedding_versions"

    def item_counter(self, counter: str) -> str:
        """Sorted set: item id -> the counter in log space (`recsys.domain.popularity`)."""
        return f"{self.namespace}:item_counters:{counter}"

    def event_marker(self, event_id: str) -> str:
        """Set while an event id is remembered as counted (the item counters' guard)."""
        return f"{self.namespace}:counted:{event_id}"


# Error prefixes of a server that cannot take commands now (not the command's fault).
TRANSIENT_REFUSALS = frozenset(
    {"OOM", "BUSY", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS"}
)


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
    except redis_errors.ResponseError as error:
        # Redis answered and refused the command: a script error or a key of the wrong type is
        # the command's fault (REDIS_COMMAND_FAILED); a server busy, loading, out of memory or
        # read-only is an outage like any other. The serving path degrades on both.
        transient = str(error).split(" ", 1)[0] in TRANSIENT_REFUSALS
        raise Unavailable(
            f"redis refused {what}: {error}",
            reason="REDIS_ERROR" if transient else "REDIS_COMMAND_FAILED",
        ) from error
    except redis_errors.RedisError as error:
        raise Unavailable(f"redis failed during {what}: {error}", reason="REDIS_ERROR") from error
