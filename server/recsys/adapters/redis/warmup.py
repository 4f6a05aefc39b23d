"""The Redis side of the feature store's warm-up (`recsys.data.warmup`): a marker that says the
store holds a feature snapshot, and a lock that lets one process at a time load one.

A Redis restarted without persistence comes back without either key: the marker's absence is
how every process notices, with one HGETALL, that the store needs its snapshot again. The lock
is SET NX PX with the holder's id, renewed while the load runs and deleted by its holder only;
the marker is written by a script only while the writer still holds the lock, so a Redis that
restarted during a load (lock gone with everything else) is never marked as loaded. Both keys
share a hash tag: the script's two keys are in one slot of a Redis Cluster."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from recsys.adapters.redis.connection import RedisClient, create_client, translate
from recsys.adapters.redis.features import RedisFeatureStore
from recsys.settings import RecsysSettings, RedisSettings

# Bulk writes and the warm-up's checks run in the background, not on a request's budget: a
# pipeline of 2,000 item hashes on a busy machine must not fail on the serving reads' 50 ms.
BULK_SOCKET_TIMEOUT_MS = 2_000

# KEYS[1] = lock, ARGV[1] = holder, ARGV[2] = milliseconds.
EXTEND_LOCK_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1] = lock, ARGV[1] = holder.
UNLOCK_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] = lock, KEYS[2] = marker, ARGV[1] = holder, then field, value pairs. The marker is
# replaced whole, and only by the lock's holder.
MARK_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
return 1
"""


class RedisLoadMarker:
    """The `recsys.data.warmup.LoadMarker` of a Redis feature store's namespace."""

    def __init__(self, client: RedisClient, *, namespace: str) -> None:
        self.client = client
        self.marker_key = f"{namespace}:{{feature_snapshot}}:loaded"
        self.lock_key = f"{namespace}:{{feature_snapshot}}:loading"
        self._extend = client.register_script(EXTEND_LOCK_SCRIPT)
        self._unlock = client.register_script(UNLOCK_SCRIPT)
        self._mark = client.register_script(MARK_SCRIPT)

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> RedisLoadMarker:
        client = create_client(bulk_settings(settings.redis))
        return cls(client, namespace=settings.redis.namespace)

    async def loaded(self) -> dict[str, str] | None:
        fields = cast(
            dict[bytes, bytes],
            await translate(lambda: self.client.hgetall(self.marker_key), "a load marker read"),
        )
        if not fields:
            return None
        return {bytes(name).decode(): bytes(value).decode() for name, value in fields.items()}

    async def try_lock(self, holder: str, ttl_seconds: float) -> bool:
        milliseconds = max(1, int(ttl_seconds * 1000))
        taken = await translate(
            lambda: self.client.set(self.lock_key, holder, nx=True, px=milliseconds),
            "a load lock",
        )
        return bool(taken)

    async def extend_lock(self, holder: str, ttl_seconds: float) -> bool:
        milliseconds = max(1, int(ttl_seconds * 1000))
        extended = await translate(
            lambda: self._extend(keys=[self.lock_key], args=[holder, milliseconds]),
            "a load lock renewal",
        )
        return bool(extended)

    async def unlock(self, holder: str) -> None:
        await translate(lambda: self._unlock(keys=[self.lock_key], args=[holder]), "a load unlock")

    async def mark_loaded(self, holder: str, record: Mapping[str, str]) -> bool:
        pairs = [part for name, value in record.items() for part in (name, value)]
        marked = await translate(
            lambda: self._mark(keys=[self.lock_key, self.marker_key], args=[holder, *pairs]),
            "a load marker write",
        )
        return bool(marked)

    async def close(self) -> None:
        await self.client.aclose()


def bulk_settings(settings: RedisSettings) -> RedisSettings:
    """The settings with the bulk writes' socket timeout (never shorter than the serving one)."""
    timeout = max(settings.socket_timeout_ms, BULK_SOCKET_TIMEOUT_MS)
    return settings.model_copy(update={"socket_timeout_ms": timeout})


def bulk_feature_store(settings: RecsysSettings, marker: RedisLoadMarker) -> RedisFeatureStore:
    """A feature store that writes a snapshot over the marker's client (its own connections,
    beside the serving pool), without an item cache (it only writes). Closed with the
    marker."""
    return RedisFeatureStore(
        marker.client,
        namespace=settings.redis.namespace,
        item_cache_max_items=0,
        recent_window_seconds=settings.realtime.recent_window_seconds,
        recent_keep=settings.realtime.recent_keep,
    )
