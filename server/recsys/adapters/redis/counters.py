"""ItemCounters on Redis: one sorted set per counter (member: item id, score: the counter in
log space, `recsys.domain.popularity`) and one marker key per counted event id, all written by
one Lua script per batch so a marker is never set without its counts, nor counts without it.
On a Redis Cluster all of them carry one hash tag (`COUNTERS_TAG`), so they live in one slot;
standalone and sentinel keep the names without it (`Keys.item_counter`)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from typing import cast

from redis.typing import EncodableT

from recsys.adapters.counters import half_lives, increments, wall_clock
from recsys.adapters.redis.connection import (
    Keys,
    RedisClient,
    create_client,
    is_cluster,
    translate,
)
from recsys.domain.interactions import Interaction
from recsys.domain.popularity import decayed
from recsys.ports.counters import Counter, ItemCounters
from recsys.settings import RecsysSettings

# Counters in this order: KEYS[1..n] are their sets.
COUNTERS = tuple(Counter)

# KEYS = the n counters' sets, then one marker key per event; ARGV[1] = marker TTL (s),
# ARGV[2] = n, then per event: item id and its n log-space terms. An event whose marker is new
# adds its terms: new = log2(2^old + 2^term), the larger plus log2(1 + 2^-difference) (no
# overflow; Lua 5.1 has no log1p, and the loss is far below the counters' tolerance). Scores
# are written with 17 digits (Lua's default tostring keeps 14). Returns how many were new.
# The weights and times are Python's (`increments`): only the addition runs here.
RECORD_SCRIPT = """
local ttl = ARGV[1]
local counters = tonumber(ARGV[2])
local scale = 1 / math.log(2)
local function log_add(a, b)
  if a < b then a, b = b, a end
  return a + math.log(1 + 2 ^ (b - a)) * scale
end
local new = 0
for event = 1, #KEYS - counters do
  if redis.call('SET', KEYS[counters + event], '1', 'NX', 'EX', ttl) then
    local base = 2 + (event - 1) * (counters + 1)
    local member = ARGV[base + 1]
    for counter = 1, counters do
      local value = tonumber(ARGV[base + 1 + counter])
      local old = redis.call('ZSCORE', KEYS[counter], member)
      if old then
        value = log_add(tonumber(old), value)
      end
      redis.call('ZADD', KEYS[counter], string.format('%.17g', value), member)
    end
    new = new + 1
  end
end
return new
"""

# KEYS[1] = a counter's set, ARGV[1] = limit. The top `limit` by score, and every member whose
# score equals the last one's: the set orders ties by member text ("10" before "9"), so the
# caller orders the tie at the cut by number itself.
TOP_SCRIPT = """
local limit = tonumber(ARGV[1])
local top = redis.call('ZREVRANGE', KEYS[1], 0, limit - 1, 'WITHSCORES')
if #top < 2 * limit then
  return {top, {}}
end
local boundary = top[#top]
return {top, redis.call('ZRANGEBYSCORE', KEYS[1], boundary, boundary)}
"""


class RedisItemCounters(ItemCounters):
    def __init__(
        self,
        client: RedisClient,
        *,
        namespace: str,
        popularity_half_life_seconds: float = 168 * 3600,
        trending_half_life_seconds: float = 3600,
        event_marker_ttl_seconds: int = 7 * 86_400,
        clock: Callable[[], dt.datetime] = wall_clock,
    ) -> None:
        self.client = client
        self.keys = Keys(namespace, cluster=is_cluster(client))
        self.half_lives = {
            Counter.POPULARITY: popularity_half_life_seconds,
            Counter.TRENDING: trending_half_life_seconds,
        }
        self.event_marker_ttl_seconds = event_marker_ttl_seconds
        self.clock = clock
        self._record = client.register_script(RECORD_SCRIPT)
        self._top = client.register_script(TOP_SCRIPT)

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> RedisItemCounters:
        seconds = half_lives(settings)
        return cls(
            # No retries: a timed-out batch may have run; the consumer redelivers it, and the
            # markers skip what was counted.
            create_client(settings.redis, retries=0),
            namespace=settings.redis.namespace,
            popularity_half_life_seconds=seconds[Counter.POPULARITY],
            trending_half_life_seconds=seconds[Counter.TRENDING],
            event_marker_ttl_seconds=settings.realtime.event_marker_ttl_seconds,
        )

    async def record(self, events: Sequence[Interaction]) -> int:
        counted = increments(events, self.half_lives, self.clock())
        if not counted:
            return 0
        keys = [self.keys.item_counter(counter.value) for counter in COUNTERS]
        keys.extend(self.keys.event_marker(increment.event_id) for increment in counted)
        args: list[EncodableT] = [self.event_marker_ttl_seconds, len(COUNTERS)]
        for increment in counted:
            args.append(increment.item_id)
            # repr: the shortest text that reads back as the same double.
            args.extend(repr(increment.terms[counter]) for counter in COUNTERS)
        new = await translate(lambda: self._record(keys=keys, args=args), "a counters write")
        return int(new)

    async def values(
        self, counter: Counter, item_ids: Sequence[int], *, now: dt.datetime | None = None
    ) -> dict[int, float]:
        if not item_ids:
            return {}
        moment = self.clock() if now is None else now
        key = self.keys.item_counter(counter.value)
        scores = cast(
            list[float | None],
            await translate(
                lambda: self.client.zmscore(key, [str(item) for item in item_ids]),
                "a counters read",
            ),
        )
        half_life = self.half_lives[counter]
        return {
            item_id: decayed(-math.inf if score is None else float(score), moment, half_life)
            for item_id, score in zip(item_ids, scores, strict=True)
        }

    async def top(self, counter: Counter, limit: int) -> list[int]:
        if limit <= 0:
            return []
        key = self.keys.item_counter(counter.value)
        top, ties = await translate(lambda: self._top(keys=[key], args=[limit]), "a counters read")
        pairs = cast(list[bytes], top)
        scores = {int(pairs[index]): float(pairs[index + 1]) for index in range(0, len(pairs), 2)}
        if ties:
            boundary = float(pairs[-1])
            scores.update((int(member), boundary) for member in cast(list[bytes], ties))
        return sorted(scores, key=lambda item: (-scores[item], item))[:limit]

    async def close(self) -> None:
        await self.client.aclose()
