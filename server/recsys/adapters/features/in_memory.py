"""FeatureStore in process memory, for the embedded mode (and as the contract's reference)."""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import Callable, Mapping, Sequence

from recsys.domain.interactions import Interaction, InteractionKind
from recsys.domain.popularity import unix_milliseconds
from recsys.ports.features import (
    FeatureStore,
    ItemFeatureBatch,
    ItemFeatures,
    ItemFeatureTable,
    UserEmbedding,
    UserFeatures,
)
from recsys.settings import RecsysSettings


def wall_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def recent_by_user(
    events: Sequence[Interaction], now: dt.datetime, window_seconds: int
) -> dict[str, dict[int, int]]:
    """User -> item -> latest event time (Unix ms) of the events that change recent
    interactions: not skips, with a kind and a time, inside the window. A time after `now`
    counts as `now` (a client's clock running ahead must not pin an item at the top)."""
    latest_time = unix_milliseconds(now)
    cutoff = latest_time - window_seconds * 1000
    per_user: dict[str, dict[int, int]] = {}
    for event in events:
        if event.kind in (None, InteractionKind.SKIP) or event.event_time is None:
            continue
        milliseconds = min(unix_milliseconds(event.event_time), latest_time)
        if milliseconds < cutoff:
            continue
        items = per_user.setdefault(event.user_id, {})
        items[event.item_id] = max(items.get(event.item_id, milliseconds), milliseconds)
    return per_user


def newest_first(times: Mapping[int, int]) -> list[int]:
    """Item ids by latest time descending, ties by id ascending (the read order)."""
    return sorted(times, key=lambda item: (-times[item], item))


class InMemoryFeatureStore(FeatureStore):
    def __init__(
        self,
        *,
        recent_window_seconds: int = 1800,
        recent_keep: int = 100,
        clock: Callable[[], dt.datetime] = wall_clock,
    ) -> None:
        self.recent_window_seconds = recent_window_seconds
        self.recent_keep = recent_keep
        self.clock = clock
        self._embeddings: dict[str, UserEmbedding] = {}
        # Columns, so a read of many items is array work, not a step per item.
        self._items = ItemFeatureTable()
        self._default: UserEmbedding | None = None
        self._preferences: dict[str, dict[str, float]] = {}
        # User -> item -> latest event time (Unix ms), as the Redis sorted set.
        self._recent: dict[str, dict[int, int]] = {}

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> InMemoryFeatureStore:
        return cls(
            recent_window_seconds=settings.realtime.recent_window_seconds,
            recent_keep=settings.realtime.recent_keep,
        )

    async def get_user_embedding(self, user_id: str) -> UserEmbedding | None:
        return self._embeddings.get(user_id)

    async def put_user_embedding(self, user_id: str, embedding: UserEmbedding) -> None:
        # Copy so later changes to the caller's array do not leak into the store.
        self._embeddings[user_id] = UserEmbedding(
            embedding.vector.astype("float32", copy=True),
            embedding.embedding_version,
            embedding.generated_at,
        )

    async def embedding_version_counts(self) -> dict[str, int]:
        return dict(
            collections.Counter(
                embedding.embedding_version for embedding in self._embeddings.values()
            )
        )

    async def get_user_features(self, user_id: str) -> UserFeatures:
        cutoff = self._cutoff(self.clock())
        times = self._recent.get(user_id, {})
        inside = {item: moment for item, moment in times.items() if moment >= cutoff}
        if not inside:
            # Everything aged out: what the Redis key's expiry does.
            self._recent.pop(user_id, None)
        return UserFeatures(
            self._embeddings.get(user_id),
            dict(self._preferences.get(user_id, {})),
            tuple(newest_first(inside)),
        )

    async def put_user_preferences(self, user_id: str, preferences: Mapping[str, float]) -> None:
        self._preferences[user_id] = {key: float(value) for key, value in preferences.items()}

    async def record_events(
        self, events: Sequence[Interaction], *, now: dt.datetime | None = None
    ) -> None:
        moment = self.clock() if now is None else now
        cutoff = self._cutoff(moment)
        for user_id, latest in recent_by_user(events, moment, self.recent_window_seconds).items():
            times = {
                item: stamp
                for item, stamp in self._recent.get(user_id, {}).items()
                if stamp >= cutoff
            }
            for item_id, stamp in latest.items():
                times[item_id] = max(times.get(item_id, stamp), stamp)
            # Beyond `keep`, the items a read would list last go.
            self._recent[user_id] = {
                item: times[item] for item in newest_first(times)[: self.recent_keep]
            }

    def _cutoff(self, now: dt.datetime) -> int:
        return unix_milliseconds(now) - self.recent_window_seconds * 1000

    async def get_item_features(self, item_ids: Sequence[int]) -> ItemFeatureBatch:
        return self._items.lookup(item_ids)

    async def put_item_features(self, items: Mapping[int, ItemFeatures]) -> None:
        # The table copies the values into its columns: later changes to the caller's arrays
        # do not leak into the store.
        self._items.upsert(items)

    async def get_default_user_embedding(self) -> UserEmbedding | None:
        return self._default

    async def put_default_user_embedding(self, embedding: UserEmbedding) -> None:
        self._default = embedding

    async def delete_user(self, user_id: str) -> int:
        removed = [
            self._embeddings.pop(user_id, None),
            self._preferences.pop(user_id, None),
            self._recent.pop(user_id, None),
        ]
        return sum(value is not None for value in removed)
