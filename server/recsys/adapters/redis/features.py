"""FeatureStore on Redis: one hash per user and per item, vectors as little-endian float32
bytes, every read one round trip (a pipeline), and an in-process read-through cache for item
features with a TTL and a bound on entries. A user's keys carry the user's hash tag
(`user_tag`), so erasure deletes exactly that user's keys, in one slot.

A user's recent interactions are a sorted set (member: item id, score: latest event time in
Unix milliseconds); the embedding versions are counted in one hash (`embedding_versions`), on
a Redis Cluster in one hash per slot (`Keys.embedding_versions`), summed when read."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import numpy as np
import numpy.typing as npt
from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.typing import EncodableT, FieldT

from recsys.adapters.features.in_memory import recent_by_user, wall_clock
from recsys.adapters.redis.connection import (
    Keys,
    RedisClient,
    create_client,
    is_cluster,
    slot_of,
    translate,
)
from recsys.domain.interactions import Interaction
from recsys.domain.popularity import unix_milliseconds
from recsys.ports.features import (
    FeatureStore,
    ItemFeatureBatch,
    ItemFeatures,
    UserEmbedding,
    UserFeatures,
    batch_from,
)
from recsys.settings import RecsysSettings

VECTOR_DTYPE = np.dtype("<f4")

# KEYS = users' recent sets; ARGV[1] = cutoff (ms, oldest time kept), ARGV[2] = keep,
# ARGV[3] = window (s), then per key: the number of its events n and n pairs (time ms, item).
# ZADD GT keeps each item's latest time; out-of-window items go, then beyond `keep` the oldest
# go, and of a tie at that cut the largest ids (reads order ties by id ascending, so the kept
# items are the first `keep` a read would list). Ids are compared as decimal strings (length,
# then text): Lua numbers are doubles, exact only to 2^53. Every kept time is at most now, so
# the key may expire a window after its last write. A list there is the layout before sorted
# sets (at most 30 minutes old when deployed): it goes. On a Redis Cluster a script's keys must
# share a slot: the caller runs it once per slot of the batch (`_record_per_slot`).
RECORD_RECENT_SCRIPT = """
local cutoff = ARGV[1]
local keep = tonumber(ARGV[2])
local position = 4
local function larger_id(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
for _, key in ipairs(KEYS) do
  if redis.call('TYPE', key).ok == 'list' then
    redis.call('DEL', key)
  end
  local count = tonumber(ARGV[position])
  for event = 1, count do
    local offset = position + 2 * event - 1
    redis.call('ZADD', key, 'GT', ARGV[offset], ARGV[offset + 1])
  end
  position = position + 1 + 2 * count
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. cutoff)
  local excess = redis.call('ZCARD', key) - keep
  if excess > 0 then
    local oldest = redis.call('ZRANGE', key, 0, excess - 1, 'WITHSCORES')
    local boundary = oldest[#oldest]
    excess = excess - redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. boundary)
    local ties = redis.call('ZRANGEBYSCORE', key, boundary, boundary)
    table.sort(ties, larger_id)
    for drop = 1, excess do
      redis.call('ZREM', key, ties[drop])
    end
  end
  redis.call('EXPIRE', key, ARGV[3])
end
return #KEYS
"""

# Both scripts below start here: KEYS[1] = the user's hash, KEYS[2] = the version counts; the
# user's current version (if any) is counted out.
UNCOUNT_VERSION = """
local old = redis.call('HGET', KEYS[1], 'embedding_version')
if old then
  if redis.call('HINCRBY', KEYS[2], old, -1) <= 0 then
    redis.call('HDEL', KEYS[2], old)
  end
end
"""

# KEYS[1] = the user's hash, KEYS[2] = the version counts; ARGV = vector bytes, version,
# generated_at. Moves the user's count from the old version to the new one with the write, so
# the counts never drift (and a retried call leaves them the same). On a Redis Cluster KEYS[2]
# is the counts of the user's slot (`Keys.embedding_versions`), so both keys share a slot.
PUT_EMBEDDING_SCRIPT = (
    UNCOUNT_VERSION
    + """redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('HSET', KEYS[1], 'embedding', ARGV[1], 'embedding_version', ARGV[2],
  'generated_at', ARGV[3])
return 1
"""
)

# KEYS[1] = the user's hash, KEYS[2] = the version counts, KEYS[3..] = the user's other keys.
# Returns how many of the user's keys went (all in the user's slot, as above).
DELETE_USER_SCRIPT = (
    UNCOUNT_VERSION
    + """local deleted = redis.call('DEL', KEYS[1])
for index = 3, #KEYS do
  deleted = deleted + redis.call('DEL', KEYS[index])
end
return deleted
"""
)


# KEYS = item feature hashes; returns each one's HGETALL (empty where absent), in order. One
# command for a ranking request's candidates instead of a pipeline of one HGETALL each: redis-py
# spends tens of microseconds of Python per pipelined command (packing, a reply callback, its
# timeout), which at 1,000 candidates not in the item cache was the largest share of a
# full-path request's CPU. Read-only (no shebang flags: Redis 6 runs it too). Standalone and
# sentinel only: on a Redis Cluster the items live in many slots, and the pipeline (split by
# node) stays.
READ_ITEMS_SCRIPT = """
local replies = {}
for index, key in ipairs(KEYS) do
  replies[index] = redis.call('HGETALL', key)
end
return replies
"""


# ARGV = the version counts of the slots one cluster node serves; returns {version, count, ...}
# summed over them. One call per node instead of 16 384 reads: the client's cost of those (~1 s
# of Python on a loaded machine) would stall the serving process's event loop at every metric
# refresh. The names are arguments, not KEYS: a command's declared keys must share one slot;
# the allow-cross-slot-keys flag (Redis 7) lets a script read keys of several slots of its own
# node (a key of another node fails the call: a slot moved).
SUM_VERSIONS_SCRIPT = """#!lua flags=no-writes,allow-cross-slot-keys
local totals = {}
for _, key in ipairs(ARGV) do
  local fields = redis.call('HGETALL', key)
  for index = 1, #fields, 2 do
    totals[fields[index]] = (totals[fields[index]] or 0) + tonumber(fields[index + 1])
  end
end
local flat = {}
for version, count in pairs(totals) do
  flat[#flat + 1] = version
  flat[#flat + 1] = count
end
return flat
"""


def encode_vector(vector: npt.NDArray[np.float32]) -> bytes:
    return np.ascontiguousarray(vector, dtype=VECTOR_DTYPE).tobytes()


def decode_vector(data: bytes) -> npt.NDArray[np.float32]:
    return np.frombuffer(data, dtype=VECTOR_DTYPE).astype(np.float32)


class ItemCache:
    """LRU with a time to live. Unknown items (`None`) are remembered too, but only for
    `miss_ttl_seconds` (short): an item missing because Redis restarted empty or a snapshot is
    being loaded must be found again soon after it is written, not scored with defaults for
    the whole positive TTL."""

    def __init__(self, ttl_seconds: float, max_items: int, miss_ttl_seconds: float = 1.0) -> None:
        self.ttl = ttl_seconds
        self.miss_ttl = min(miss_ttl_seconds, ttl_seconds)
        self.max_items = max_items
        self._entries: collections.OrderedDict[int, tuple[float, ItemFeatures | None]] = (
            collections.OrderedDict()
        )

    def get(self, item_id: int, now: float) -> tuple[bool, ItemFeatures | None]:
        entry = self._entries.get(item_id)
        if entry is None or entry[0] < now:
            return False, None
        self._entries.move_to_end(item_id)
        return True, entry[1]

    def put(self, item_id: int, value: ItemFeatures | None, now: float) -> None:
        ttl = self.ttl if value is not None else self.miss_ttl
        if self.max_items <= 0 or ttl <= 0:
            self._entries.pop(item_id, None)
            return
        self._entries[item_id] = (now + ttl, value)
        self._entries.move_to_end(item_id)
        while len(self._entries) > self.max_items:
            self._entries.popitem(last=False)

    def drop(self, item_id: int) -> None:
        self._entries.pop(item_id, None)

    def __len__(self) -> int:
        return len(self._entries)


class RedisFeatureStore(FeatureStore):
    def __init__(
        self,
        client: RedisClient,
        *,
        namespace: str,
        item_cache_ttl_seconds: float = 60.0,
        item_cache_max_items: int = 100_000,
        item_cache_miss_ttl_seconds: float = 1.0,
        recent_window_seconds: int = 1800,
        recent_keep: int = 100,
        clock: Callable[[], dt.datetime] = wall_clock,
    ) -> None:
        self.client = client
        self.keys = Keys(namespace, cluster=is_cluster(client))
        self.item_cache = ItemCache(
            item_cache_ttl_seconds, item_cache_max_items, item_cache_miss_ttl_seconds
        )
        self.recent_window_seconds = recent_window_seconds
        self.recent_keep = recent_keep
        # Reads cut the recent window at this clock's time (tests move it).
        self.clock = clock
        self._record_recent = client.register_script(RECORD_RECENT_SCRIPT)
        self._put_embedding = client.register_script(PUT_EMBEDDING_SCRIPT)
        self._delete_user = client.register_script(DELETE_USER_SCRIPT)
        self._read_items = client.register_script(READ_ITEMS_SCRIPT)

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> RedisFeatureStore:
        return cls(
            create_client(settings.redis),
            namespace=settings.redis.namespace,
            item_cache_ttl_seconds=settings.features.item_cache_ttl_seconds,
            item_cache_max_items=settings.features.item_cache_max_items,
            item_cache_miss_ttl_seconds=settings.features.item_cache_miss_ttl_seconds,
            recent_window_seconds=settings.realtime.recent_window_seconds,
            recent_keep=settings.realtime.recent_keep,
        )

    async def get_user_embedding(self, user_id: str) -> UserEmbedding | None:
        return await self._read_embedding(self.keys.user_features(user_id))

    async def put_user_embedding(self, user_id: str, embedding: UserEmbedding) -> None:
        keys = [self.keys.user_features(user_id), self.keys.embedding_versions(user_id)]
        args: list[EncodableT] = [
            encode_vector(embedding.vector),
            embedding.embedding_version,
            embedding.generated_at.isoformat(),
        ]
        await translate(lambda: self._put_embedding(keys=keys, args=args), "a user write")

    async def embedding_version_counts(self) -> dict[str, int]:
        if not isinstance(self.client, RedisCluster):
            key = self.keys.all_embedding_versions()[0]
            counts = cast(
                dict[bytes, bytes],
                await translate(lambda: self.client.hgetall(key), "a version read"),
            )
            return {version.decode(): int(count) for version, count in counts.items()}
        totals = await translate(
            functools.partial(self._sum_per_node, self.client), "a version read"
        )
        return {version: count for version, count in sorted(totals.items()) if count > 0}

    async def _sum_per_node(self, client: RedisCluster) -> collections.Counter[str]:
        """The per-slot counts, summed by each node over the slots it serves (one script per
        node, all at once), then here. Bounded whatever the number of keys, unlike a SCAN. A
        slot moving meanwhile fails the read (Unavailable); the next one sees the new map."""
        await client.initialize()
        per_node: dict[str, tuple[ClusterNode, list[str]]] = {}
        for slot, key in enumerate(self.keys.all_embedding_versions()):
            node = client.nodes_manager.get_node_from_slot(slot)
            per_node.setdefault(node.name, (node, []))[1].append(key)
        replies = await asyncio.gather(
            *(
                client.execute_command("EVAL", SUM_VERSIONS_SCRIPT, 0, *keys, target_nodes=node)
                for node, keys in per_node.values()
            )
        )
        totals: collections.Counter[str] = collections.Counter()
        for reply in replies:
            flat = cast(list[bytes | int], reply)
            for index in range(0, len(flat), 2):
                totals[bytes(cast(bytes, flat[index])).decode()] += int(flat[index + 1])
        return totals

    async def get_user_features(self, user_id: str) -> UserFeatures:
        cutoff = self._cutoff_milliseconds(self.clock())

        async def read() -> list[object]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hgetall(self.keys.user_features(user_id))
                pipe.zrangebyscore(self.keys.user_recent(user_id), cutoff, "+inf", withscores=True)
                results = list(await pipe.execute(raise_on_error=False))
            if isinstance(results[0], Exception):
                raise results[0]
            if isinstance(results[1], redis_errors.ResponseError):
                if "WRONGTYPE" not in str(results[1]):
                    raise results[1]
                # The list layout before sorted sets (expires within 30 minutes of the
                # deployment, or the next write replaces it): no recent items until then.
                results[1] = []
            return results

        fields, recent = await translate(read, "a user read")
        fields = cast(dict[bytes, bytes], fields)
        preferences_raw = fields.get(b"preferences") if fields else None
        # Newest first, ties by id: the set orders ties by member text ("10" before "9").
        newest_first = sorted(
            (-float(score), int(item)) for item, score in cast(list[tuple[bytes, float]], recent)
        )
        return UserFeatures(
            _embedding_from(fields),
            json.loads(preferences_raw) if preferences_raw else {},
            tuple(item for _, item in newest_first),
        )

    async def put_user_preferences(self, user_id: str, preferences: Mapping[str, float]) -> None:
        payload = json.dumps({key: float(value) for key, value in preferences.items()})
        await translate(
            lambda: self.client.hset(self.keys.user_features(user_id), "preferences", payload),
            "a user write",
        )

    async def record_events(
        self, events: Sequence[Interaction], *, now: dt.datetime | None = None
    ) -> None:
        moment = self.clock() if now is None else now
        per_user = recent_by_user(events, moment, self.recent_window_seconds)
        if not per_user:
            return
        header: list[EncodableT] = [
            self._cutoff_milliseconds(moment),
            self.recent_keep,
            self.recent_window_seconds,
        ]
        # One script run for the batch; on a cluster one per slot (a user's key in each).
        runs: dict[int, tuple[list[str], list[EncodableT]]] = {}
        for user_id, latest in per_user.items():
            key = self.keys.user_recent(user_id)
            keys, args = runs.setdefault(slot_of(key) if self.keys.cluster else 0, ([], [*header]))
            keys.append(key)
            args.append(len(latest))
            for item_id, milliseconds in latest.items():
                args.extend((milliseconds, item_id))
        if len(runs) == 1:
            ((keys, args),) = runs.values()
            await translate(
                lambda: self._record_recent(keys=keys, args=args), "a recent-interactions write"
            )
            return
        await translate(
            lambda: self._record_per_slot(list(runs.values())), "a recent-interactions write"
        )

    async def _record_per_slot(self, runs: list[tuple[list[str], list[EncodableT]]]) -> None:
        """The recent-items script once per slot, all in one pipeline (redis-py sends each
        node its runs in one round trip). A node that lost its script cache (restarted,
        failed over) answers NOSCRIPT: the script is loaded and those runs go again, which
        leaves the same state (every run is idempotent)."""
        sha = self._record_recent.sha
        for attempt in range(2):
            async with self.client.pipeline(transaction=False) as pipe:
                for keys, args in runs:
                    # Not `pipe.evalsha`: redis-py blocks it on cluster pipelines, which cannot
                    # load a missing script; this loop does. Routed by the keys' slot.
                    pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
                results = list(await pipe.execute(raise_on_error=False))
            unloaded = []
            for run, result in zip(runs, results, strict=True):
                if isinstance(result, redis_errors.NoScriptError) and attempt == 0:
                    unloaded.append(run)
                elif isinstance(result, Exception):
                    raise result
            if not unloaded:
                return
            sha = await self.client.script_load(RECORD_RECENT_SCRIPT)
            runs = unloaded

    def _cutoff_milliseconds(self, now: dt.datetime) -> int:
        return unix_milliseconds(now) - self.recent_window_seconds * 1000

    async def get_default_user_embedding(self) -> UserEmbedding | None:
        return await self._read_embedding(self.keys.default_user_features())

    async def put_default_user_embedding(self, embedding: UserEmbedding) -> None:
        await self._write_embedding(self.keys.default_user_features(), embedding)

    async def _read_embedding(self, key: str) -> UserEmbedding | None:
        # decode_responses=False: the client returns bytes keys and values.
        fields = cast(
            dict[bytes, bytes], await translate(lambda: self.client.hgetall(key), "a user read")
        )
        return _embedding_from(fields)

    async def _write_embedding(self, key: str, embedding: UserEmbedding) -> None:
        mapping: dict[FieldT, EncodableT] = {
            "embedding": encode_vector(embedding.vector),
            "embedding_version": embedding.embedding_version,
            "generated_at": embedding.generated_at.isoformat(),
        }
        await translate(lambda: self.client.hset(key, mapping=mapping), "a user write")

    async def get_item_features(self, item_ids: Sequence[int]) -> ItemFeatureBatch:
        now = time.monotonic()
        found: dict[int, ItemFeatures | None] = {}
        missing: list[int] = []
        for item_id in item_ids:
            cached, value = self.item_cache.get(item_id, now)
            if cached:
                found[item_id] = value
            else:
                missing.append(item_id)
        if missing:
            keys = [self.keys.item_features(item_id) for item_id in missing]
            read = functools.partial(self.read_item_fields, keys, batched=not self.keys.cluster)
            for item_id, fields in zip(missing, await translate(read, "an item read"), strict=True):
                value = _item_from_fields(fields)
                found[item_id] = value
                self.item_cache.put(item_id, value, now)
        return batch_from([found[item_id] for item_id in item_ids])

    async def read_item_fields(self, keys: list[str], *, batched: bool) -> list[dict[bytes, bytes]]:
        """Every item hash's fields, in one script call (`batched`, standalone and sentinel)
        or a pipeline of HGETALLs (a cluster; bench/recommend.py compares the two)."""
        if batched:
            replies = cast(list[list[bytes]], await self._read_items(keys=keys))
            return [_pairs(reply) for reply in replies]
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            return list(await pipe.execute())

    async def put_item_features(self, items: Mapping[int, ItemFeatures]) -> None:
        async def write() -> None:
            async with self.client.pipeline(transaction=False) as pipe:
                for item_id, features in items.items():
                    mapping: dict[FieldT, EncodableT] = {
                        "category": features.category,
                        "popularity": repr(float(features.popularity)),
                        "freshness": repr(float(features.freshness)),
                    }
                    if features.embedding is not None:
                        mapping["embedding"] = encode_vector(features.embedding)
                    pipe.hset(self.keys.item_features(int(item_id)), mapping=mapping)
                await pipe.execute()

        await translate(write, "an item write")
        for item_id in items:
            self.item_cache.drop(int(item_id))

    async def delete_user(self, user_id: str) -> int:
        # Exact keys of this user only (the user's hash tag), and the version count with them.
        keys = [
            self.keys.user_features(user_id),
            self.keys.embedding_versions(user_id),
            self.keys.user_recent(user_id),
        ]
        deleted = await translate(lambda: self._delete_user(keys=keys), "a user delete")
        return int(deleted)

    async def close(self) -> None:
        await self.client.aclose()


def _embedding_from(fields: dict[bytes, bytes] | None) -> UserEmbedding | None:
    if not fields or b"embedding" not in fields:
        return None
    return UserEmbedding(
        decode_vector(fields[b"embedding"]),
        bytes(fields[b"embedding_version"]).decode(),
        dt.datetime.fromisoformat(bytes(fields[b"generated_at"]).decode()),
    )


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    """HGETALL's reply inside a script's: field, value, field, value..."""
    values = iter(flat)
    return dict(zip(values, values, strict=True))


def _item_from_fields(fields: dict[bytes, bytes]) -> ItemFeatures | None:
    if not fields:
        return None
    embedding = fields.get(b"embedding")
    return ItemFeatures(
        category=fields.get(b"category", b"").decode(),
        popularity=float(fields.get(b"popularity", b"0")),
        freshness=float(fields.get(b"freshness", b"0")),
        embedding=decode_vector(embedding) if embedding else None,
    )
