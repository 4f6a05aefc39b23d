"""FeatureStore on Redis: one hash per user and per item, vectors as little-endian float32
bytes, every read one round trip (a pipeline), and an in-process read-through cache for item
features with a TTL and a bound on entries. A user's keys carry the user's hash tag
(`user_tag`), so erasure deletes exactly that user's keys, in one slot."""

from __future__ import annotations

import collections
import datetime as dt
import json
import time
from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from recsys.adapters.redis.connection import Keys, create_client, translate
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
        client: aioredis.Redis,
        *,
        namespace: str,
        item_cache_ttl_seconds: float = 60.0,
        item_cache_max_items: int = 100_000,
        item_cache_miss_ttl_seconds: float = 1.0,
    ) -> None:
        self.client = client
        self.keys = Keys(namespace)
        self.item_cache = ItemCache(
            item_cache_ttl_seconds, item_cache_max_items, item_cache_miss_ttl_seconds
        )

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> RedisFeatureStore:
        return cls(
            create_client(settings.redis),
            namespace=settings.redis.namespace,
            item_cache_ttl_seconds=settings.features.item_cache_ttl_seconds,
            item_cache_max_items=settings.features.item_cache_max_items,
            item_cache_miss_ttl_seconds=settings.features.item_cache_miss_ttl_seconds,
        )

    async def get_user_embedding(self, user_id: str) -> UserEmbedding | None:
        return await self._read_embedding(self.keys.user_features(user_id))

    async def put_user_embedding(self, user_id: str, embedding: UserEmbedding) -> None:
        await self._write_embedding(self.keys.user_features(user_id), embedding)

    async def get_user_features(self, user_id: str) -> UserFeatures:
        async def read() -> list[object]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hgetall(self.keys.user_features(user_id))
                pipe.lrange(self.keys.user_recent(user_id), 0, -1)
                return list(await pipe.execute())

        fields, recent = await translate(read, "a user read")
        fields = cast(dict[bytes, bytes], fields)
        preferences_raw = fields.get(b"preferences") if fields else None
        return UserFeatures(
            _embedding_from(fields),
            json.loads(preferences_raw) if preferences_raw else {},
            tuple(int(item) for item in cast(list[bytes], recent)),
        )

    async def put_user_preferences(self, user_id: str, preferences: Mapping[str, float]) -> None:
        payload = json.dumps({key: float(value) for key, value in preferences.items()})
        await translate(
            lambda: self.client.hset(self.keys.user_features(user_id), "preferences", payload),
            "a user write",
        )

    async def record_recent_interactions(
        self, user_id: str, item_ids: Sequence[int], *, ttl_seconds: int = 1800, keep: int = 100
    ) -> None:
        if not item_ids:
            return
        key = self.keys.user_recent(user_id)

        async def write() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.lpush(key, *[int(item) for item in item_ids])
                pipe.ltrim(key, 0, keep - 1)
                pipe.expire(key, ttl_seconds)
                await pipe.execute()

        await translate(write, "a recent-interactions write")

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

            async def read() -> list[dict[bytes, bytes]]:
                async with self.client.pipeline(transaction=False) as pipe:
                    for item_id in missing:
                        pipe.hgetall(self.keys.item_features(item_id))
                    return list(await pipe.execute())

            for item_id, fields in zip(missing, await translate(read, "an item read"), strict=True):
                value = _item_from_fields(fields)
                found[item_id] = value
                self.item_cache.put(item_id, value, now)
        return batch_from([found[item_id] for item_id in item_ids])

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
        # Exact keys of this user only, in one slot (the user's hash tag): one DEL.
        keys = [self.keys.user_features(user_id), self.keys.user_recent(user_id)]
        deleted: int = await translate(lambda: self.client.delete(*keys), "a user delete")
        return deleted

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
