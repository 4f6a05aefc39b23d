"""What an interaction or deletion event changes downstream (the consumers' effects, seed
Simulation 1 and "Privacy Controls"), the same for the Kafka consumer group and the embedded
mode's in-process consumer.

Every effect is idempotent, so at-least-once delivery is harmless: the SQL row is unique by
event id, the recent-interactions window keeps each item at its latest event time, the item
counters remember event ids, and invalidating a cached answer twice is invalidating it. Effects
run in the order that makes a crash at any point safe: the durable row first, then the derived
state and the cache invalidation together. An event of an erased user changes nothing
(tombstones)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from recsys.domain.interactions import Interaction
from recsys.ports.cache import RecommendationCache
from recsys.ports.counters import ItemCounters
from recsys.ports.features import FeatureStore
from recsys.ports.metadata import MetadataRepository


@dataclass(frozen=True, slots=True)
class AppliedEvents:
    # Events whose row was new in SQL (the rest were redeliveries).
    new: int
    # Events of erased users, dropped.
    erased_users: int


class InteractionEffects:
    def __init__(
        self,
        *,
        metadata: MetadataRepository,
        features: FeatureStore,
        counters: ItemCounters,
        cache: RecommendationCache,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.metadata = metadata
        self.features = features
        self.counters = counters
        self.cache = cache
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))

    async def apply(self, events: Sequence[Interaction]) -> AppliedEvents:
        """Applies a batch; raises RecsysError (Unavailable...) when a store fails, and the
        caller retries the whole batch."""
        if not events:
            return AppliedEvents(0, 0)
        erased = await self.metadata.erased_user_ids({event.user_id for event in events})
        kept = [event for event in events if event.user_id not in erased]
        if not kept:
            return AppliedEvents(0, len(events))
        new = await self.metadata.record_interactions(kept)
        # The row is durable: a Recommend computed from here on excludes the item through the
        # history, so the cached answers (which may hold it) go while the derived state is
        # written.
        users = sorted({event.user_id for event in kept})
        await asyncio.gather(
            self.features.record_events(kept, now=self.clock()),
            self.counters.record(kept),
            self.cache.invalidate_responses(users),
        )
        # An erasure that committed while this batch was being applied (after the check above)
        # would miss what the batch just wrote: erase those users again.
        for user_id in sorted(await self.metadata.erased_user_ids(users)):
            await self.erase(user_id)
        return AppliedEvents(new, len(events) - len(kept))

    async def erase(self, user_id: str) -> None:
        """A deletion event: the user's interactions (and tombstone), real-time features and
        cached answers go. Item counters are aggregates without user identity and stay."""
        await self.metadata.erase_user(user_id)
        await asyncio.gather(self.features.delete_user(user_id), self.cache.delete_user(user_id))
