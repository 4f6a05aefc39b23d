"""Recommendation cache in Redis under the seed's keys, each written with its TTL (SET EX)."""

from __future__ import annotations

import redis.asyncio as aioredis

from recsys.adapters.redis.connection import Keys, create_client, translate
from recsys.ports.cache import KINDS, CachedRecommendations, RecommendationCache, check_entry
from recsys.settings import RecsysSettings


class RedisRecommendationCache(RecommendationCache):
    def __init__(
        self, client: aioredis.Redis, *, namespace: str, surfaces: tuple[str, ...]
    ) -> None:
        self.client = client
        self.keys = Keys(namespace)
        self.surfaces = surfaces

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> RedisRecommendationCache:
        return cls(
            create_client(settings.redis),
            namespace=settings.redis.namespace,
            surfaces=settings.recommend.surfaces,
        )

    def _key(self, kind: str, user_id: str, surface: str) -> str:
        return f"{self.keys.namespace}:{kind}:{user_id}:{surface}"

    async def get(self, kind: str, user_id: str, surface: str) -> CachedRecommendations | None:
        check_entry(kind)
        key = self._key(kind, user_id, surface)
        data = await translate(lambda: self.client.get(key), "a cache read")
        if not data:
            return None
        return CachedRecommendations.from_bytes(data if isinstance(data, bytes) else data.encode())

    async def put(
        self,
        kind: str,
        user_id: str,
        surface: str,
        value: CachedRecommendations,
        ttl_seconds: int,
    ) -> None:
        check_entry(kind, ttl_seconds)
        key = self._key(kind, user_id, surface)
        await translate(
            lambda: self.client.set(key, value.to_bytes(), ex=ttl_seconds), "a cache write"
        )

    async def delete_user(self, user_id: str) -> int:
        # Every configured surface, plus a scan for surfaces configured earlier.
        keys = {self._key(kind, user_id, surface) for kind in KINDS for surface in self.surfaces}

        async def scan() -> set[str]:
            found = set()
            for kind in KINDS:
                pattern = f"{self.keys.namespace}:{kind}:{_glob_literal(user_id)}:*"
                async for key in self.client.scan_iter(match=pattern, count=1000):
                    found.add(key.decode() if isinstance(key, bytes) else key)
            return found

        keys |= await translate(scan, "a cache scan")
        if not keys:  # no surface configured and none found: DEL takes at least one key
            return 0
        deleted: int = await translate(lambda: self.client.delete(*keys), "a cache delete")
        return deleted

    async def close(self) -> None:
        await self.client.aclose()


def _glob_literal(text: str) -> str:
    """`text` matched literally by a SCAN pattern: a user id "*" must not erase every user."""
    return "".join(f"\\{character}" if character in "*?[]\\" else character for character in text)
