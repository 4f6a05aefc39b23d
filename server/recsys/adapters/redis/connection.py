"""Redis clients from settings, key naming and error translation shared by the Redis adapters.

One factory serves the three deployments (`redis.mode`): a standalone server, a Redis Cluster
(redis-py follows MOVED/ASK redirections and splits non-transactional pipelines by node) and a
master found through Sentinel. Every Lua script and MULTI of the adapters touches keys of one
hash slot only (docs/recommend.md, Redis keys), so the same code runs on all three."""

from __future__ import annotations

import binascii
import functools
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.typing import EncodableT

from recsys.errors import DeadlineExceeded, Unavailable
from recsys.settings import RedisSettings

T = TypeVar("T")

# What the adapters hold: the command API is the same; the adapters ask `is_cluster` only where
# the key layout differs (the embedding version counts) or a batch must be split by slot.
RedisClient = aioredis.Redis | RedisCluster


def create_client(settings: RedisSettings, *, retries: int = 1) -> RedisClient:
    """redis-py retries a failed call 3 times with up to 10 s of backoff by default; on the
    serving path a dead Redis must fail fast (callers degrade), so one immediate retry at most.
    Writes that must not run twice (counters) pass retries=0: a timed-out call may have run.
    The timeouts and the pool bound are the same in every mode (in cluster mode the bound is
    per node)."""
    common: dict[str, Any] = {
        "retry": Retry(NoBackoff(), retries=retries),
        "socket_timeout": settings.socket_timeout_ms / 1000,
        "socket_connect_timeout": settings.connect_timeout_ms / 1000,
        "max_connections": settings.max_connections,
        "decode_responses": False,
        "health_check_interval": 30,
    }
    if settings.mode == "standalone":
        return aioredis.Redis.from_url(settings.url, **common)
    url = urlsplit(settings.url)
    credentials: dict[str, Any] = {
        "username": unquote(url.username) if url.username else None,
        "password": unquote(url.password) if url.password else None,
        "ssl": url.scheme == "rediss",
    }
    if settings.mode == "cluster":
        nodes = [ClusterNode(url.hostname or "127.0.0.1", url.port or 6379)]
        nodes.extend(ClusterNode(*_address(node)) for node in settings.startup_nodes)
        return _Cluster(startup_nodes=nodes, **credentials, **common)
    # Sentinel: the sentinels are asked with the same timeouts; the master's connections
    # (pool, retries, database, credentials) are those of the other modes.
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        [_address(address) for address in settings.sentinels],
        sentinel_kwargs={
            "socket_timeout": common["socket_timeout"],
            "socket_connect_timeout": common["socket_connect_timeout"],
        },
    )
    database = url.path.strip("/")
    master: aioredis.Redis = sentinel.master_for(
        settings.master_name,
        redis_class=aioredis.Redis,
        db=int(database) if database else 0,
        **credentials,
        **common,
    )
    return master


class _Cluster(RedisCluster):
    """redis-py (8.1) resolves a command's node before its lazy first `initialize`: the
    commands of a first burst go to arbitrary nodes, and their MOVED replies make the client
    rebuild its node table while the others use its connections (closed under them, seen as
    ConnectionErrors). Initializing before routing avoids it (a no-op once initialized, and
    again after a failover marks the table stale)."""

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        await self.initialize()
        return await super().execute_command(*args, **kwargs)


def _address(node: str) -> tuple[str, int]:
    host, _, port = node.rpartition(":")
    return host, int(port)


def is_cluster(client: RedisClient) -> bool:
    return isinstance(client, RedisCluster)


def slot_of(key: str) -> int:
    """The key's Redis Cluster hash slot (its hash tag's, when it has one)."""
    return key_slot(key.encode())


@functools.cache
def slot_tags() -> tuple[str, ...]:
    """For every hash slot, a short hash tag (`{n}`) of a key in that slot: the first decimal
    number n that hashes there (about 110 000 CRC16s, some 50 ms, once per process). A key
    of per-slot bookkeeping beside a user's keys takes the tag of the user's slot."""
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    missing = REDIS_CLUSTER_HASH_SLOTS
    number = 0
    while missing:
        text = str(number)
        slot = binascii.crc_hqx(text.encode(), 0) % REDIS_CLUSTER_HASH_SLOTS
        if tags[slot] is None:
            tags[slot] = "{" + text + "}"
            missing -= 1
        number += 1
    return tuple(tag for tag in tags if tag is not None)


def user_tag(user_id: str) -> str:
    """The user's part of every per-user key: the first 128 bits of the SHA-256 of the id, in
    hex, as a Redis Cluster hash tag. Fixed length and without `:`, so no key of one user is a
    prefix of another's (ids may contain `:`), ids never appear in key names, and all of a
    user's keys hash to one slot (one DEL, one MULTI). Equal to the hex of the audit log's
    `hashed_subject`, so an operator can find the keys an audit record names."""
    return "{" + hashlib.sha256(user_id.encode()).hexdigest()[:32] + "}"


# The hash tag of the item counters' keys: a script adds an event to both sets and sets its
# marker, so they share one slot (and one node of a cluster: the trade-off, docs/recommend.md).
COUNTERS_TAG = "{counters}"


class Keys:
    """Every key name, under `<namespace>:` (docs/recommend.md lists them). Per-user keys carry
    `user_tag(user_id)` instead of the id; keys that one script writes together share a hash
    tag, so every script's keys are in one cluster slot. `cluster` selects the one layout that
    differs: the embedding version counts, kept per slot beside the users they count."""

    def __init__(self, namespace: str, *, cluster: bool = False) -> None:
        self.namespace = namespace
        self.cluster = cluster
        if cluster:
            slot_tags()  # computed here, at startup, rather than inside a first request

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
        """No hash tag: items spread over the slots (written and read in pipelines)."""
        return f"{self.namespace}:item_features:{item_id}"

    def default_user_features(self) -> str:
        return f"{self.namespace}:default_user_features"

    def embedding_versions(self, user_id: str) -> str:
        """Hash: embedding version -> how many users hold an embedding of it; the one that
        counts `user_id`. One key on a single server; on a cluster one per hash slot (tagged
        for the user's slot), so a user's write and its count change in one script."""
        if not self.cluster:
            return f"{self.namespace}:embedding_versions"
        return f"{self.namespace}:embedding_versions:{slot_tags()[slot_of(user_tag(user_id))]}"

    def all_embedding_versions(self) -> list[str]:
        """Every key `embedding_versions` may return: the counts are their sum."""
        if not self.cluster:
            return [f"{self.namespace}:embedding_versions"]
        return [f"{self.namespace}:embedding_versions:{tag}" for tag in slot_tags()]

    def item_counter(self, counter: str) -> str:
        """Sorted set: item id -> the counter in log space (`recsys.domain.popularity`). On a
        cluster under the counters' tag (one script writes the sets and the markers); without
        one elsewhere, so a standalone deployment keeps its counters across the upgrade."""
        if not self.cluster:
            return f"{self.namespace}:item_counters:{counter}"
        return f"{self.namespace}:item_counters:{COUNTERS_TAG}:{counter}"

    def event_marker(self, event_id: str) -> str:
        """Set while an event id is remembered as counted (the item counters' guard). The tag
        comes before the id: only a key's first `{...}` is its hash tag."""
        if not self.cluster:
            return f"{self.namespace}:counted:{event_id}"
        return f"{self.namespace}:counted:{COUNTERS_TAG}:{event_id}"


# Error prefixes of a server that cannot take commands now (not the command's fault).
TRANSIENT_REFUSALS = frozenset(
    {"OOM", "BUSY", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS"}
)
# The same refusals as redis-py parses them (the prefix becomes the class): a cluster down or
# resharding (redirections past the client's limit), a read-only replica, memory full.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.AskError,
    redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
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
        # read-only, or a cluster down or moving slots, is an outage like any other. The
        # serving path degrades on both.
        transient = (
            isinstance(error, TRANSIENT_ERRORS) or str(error).split(" ", 1)[0] in TRANSIENT_REFUSALS
        )
        raise Unavailable(
            f"redis refused {what}: {error}",
            reason="REDIS_ERROR" if transient else "REDIS_COMMAND_FAILED",
        ) from error
    except redis_errors.CrossSlotTransactionError as error:
        # Keys of several slots in one MULTI: the command's fault, as CROSSSLOT would be.
        raise Unavailable(
            f"redis refused {what}: {error}", reason="REDIS_COMMAND_FAILED"
        ) from error
    except (redis_errors.RedisError, redis_errors.RedisClusterException) as error:
        # RedisClusterException (no node reachable, a slot no node serves) is no RedisError.
        raise Unavailable(f"redis failed during {what}: {error}", reason="REDIS_ERROR") from error
