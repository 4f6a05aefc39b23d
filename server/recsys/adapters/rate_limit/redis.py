"""Rate limiting in Redis: one atomic Lua script per request, so concurrent callers across
processes share one exact counter, and every counter key always carries a TTL (a crash between
INCR and EXPIRE, the race of the seed's two-command version, cannot leave an immortal key)."""

from __future__ import annotations

from recsys.adapters.redis.connection import Keys, RedisClient, create_client, translate
from recsys.ports.rate_limit import RateDecision, RateLimiter
from recsys.settings import RecsysSettings

# KEYS[1] = counter, ARGV[1] = window in seconds. Returns {count, milliseconds left}.
HIT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return {count, redis.call('PTTL', KEYS[1])}
"""


class RedisRateLimiter(RateLimiter):
    def __init__(
        self, client: RedisClient, *, namespace: str, limit: int, window_seconds: int
    ) -> None:
        super().__init__(limit=limit, window_seconds=window_seconds)
        self.client = client
        self.keys = Keys(namespace)
        self._script = client.register_script(HIT_SCRIPT)

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> RedisRateLimiter:
        rate = settings.rate_limit
        return cls(
            # No retries: a retried INCR after a timeout could count one request twice.
            create_client(settings.redis, retries=0),
            namespace=settings.redis.namespace,
            limit=rate.requests_per_window,
            window_seconds=rate.window_seconds,
        )

    async def hit(self, key: str) -> RateDecision:
        counter = self.keys.rate_limit(key)
        count, ttl_ms = await translate(
            lambda: self._script(keys=[counter], args=[self.window_seconds]), "a rate limit hit"
        )
        if int(count) <= self.limit:
            return RateDecision(True, self.limit - int(count), 0.0)
        return RateDecision(False, 0, max(0, int(ttl_ms)) / 1000)

    async def reset(self, key: str) -> int:
        deleted: int = await translate(
            lambda: self.client.delete(self.keys.rate_limit(key)), "a rate limit reset"
        )
        return deleted

    async def close(self) -> None:
        await self.client.aclose()
