"""Recommendation cache in Redis: one key per (kind, user, surface), each written with its TTL.
Every key of a user carries the user's hash tag (`user_tag`), and erasure deletes exact keys:
the configured surfaces' and those of the user's surface set, never a pattern."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from redis.typing import EncodableT

from recsys.adapters.redis.connection import Keys, RedisClient, create_client, translate
from recsys.ports.cache import (
    KINDS,
    RESPONSES,
    CachedRecommendations,
    RecommendationCache,
    check_entry,
)
from recsys.settings import RecsysSettings

# KEYS[1] = the entry, KEYS[2] = the user's surface set (one slot: both carry the user's hash
# tag); ARGV = value, TTL in seconds, surface. The set records every surface the user has an
# entry under (an offline job's, or one configured earlier) so erasure finds it, and lives at
# least as long as the longest of those entries.
PUT_SCRIPT = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return 1
"""


class RedisRecommendationCache(RecommendationCache):
    def __init__(self, client: RedisClient, *, namespace: str, surfaces: tuple[str, ...]) -> None:
        self.client = client
        self.keys = Keys(namespace)
        self.surfaces = surfaces
        self._put = client.register_script(PUT_SCRIPT)

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> RedisRecommendationCache:
        return cls(
            create_client(settings.redis),
            namespace=settings.redis.namespace,
            surfaces=settings.recommend.surfaces,
        )

    async def get(self, kind: str, user_id: str, surface: str) -> CachedRecommendations | None:
        check_entry(kind)
        key = self.keys.cached(kind, user_id, surface)
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
        keys = [self.keys.cached(kind, user_id, surface), self.keys.cached_surfaces(user_id)]
        args: list[EncodableT] = [value.to_bytes(), ttl_seconds, surface]
        await translate(lambda: self._put(keys=keys, args=args), "a cache write")

    async def _surfaces(self, surfaces_key: str) -> set[str]:
        """The configured surfaces and those of the user's surface set."""
        return self._with_configured(await self.client.smembers(surfaces_key))

    def _with_configured(self, recorded: Iterable[object]) -> set[str]:
        return set(self.surfaces) | {
            surface.decode() if isinstance(surface, bytes) else str(surface) for surface in recorded
        }

    async def invalidate_responses(self, user_ids: Sequence[str]) -> int:
        """Deletes the users' RESPONSES entries under the configured surfaces and those of
        their surface sets, in two round trips. The sets stay: erasure still needs them to
        find pre-computed entries."""
        users = sorted(set(user_ids))
        if not users:
            return 0

        async def invalidate() -> int:
            async with self.client.pipeline(transaction=False) as pipe:
                for user_id in users:
                    pipe.smembers(self.keys.cached_surfaces(user_id))
                recorded = await pipe.execute()
            async with self.client.pipeline(transaction=False) as pipe:
                # One DEL per user: each user's keys share one slot (a cluster pipeline sends
                # each node the DELs of its users).
                for user_id, members in zip(users, recorded, strict=True):
                    pipe.delete(
                        *[
                            self.keys.cached(RESPONSES, user_id, surface)
                            for surface in sorted(self._with_configured(members))
                        ]
                    )
                return sum(int(count) for count in await pipe.execute())

        return await translate(invalidate, "a cache invalidation")

    async def delete_user(self, user_id: str) -> int:
        """Deletes the entries of every kind under the configured surfaces and under those of
        the user's surface set; returns how many entries went (the set itself is not counted)."""
        surfaces_key = self.keys.cached_surfaces(user_id)

        async def erase() -> int:
            surfaces = await self._surfaces(surfaces_key)
            keys = [
                self.keys.cached(kind, user_id, surface)
                for kind in KINDS
                for surface in sorted(surfaces)
            ]
            # One slot (the user's tag): a MULTI on a cluster too.
            async with self.client.pipeline(transaction=True) as pipe:
                if keys:
                    pipe.delete(*keys)
                pipe.delete(surfaces_key)
                results = await pipe.execute()
            return int(results[0]) if keys else 0

        return await translate(erase, "a cache delete")

    async def close(self) -> None:
        await self.client.aclose()
