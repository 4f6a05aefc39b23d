"""ItemCounters: item popularity and trending counters kept by the event consumers, decaying
exponentially by event time (seed "Scaling Strategy" and the trending cold-start source).

A counter is a sum of event weights, each weighted by 2^(-(now - event_time) / half_life).
Adapters store it in log space relative to a fixed epoch (`recsys.domain.popularity`), so a
counter never needs a periodic decay job and the order of items is exact at any time."""

from __future__ import annotations

import abc
import datetime as dt
import enum
from collections.abc import Sequence

from recsys.domain.interactions import Interaction


class Counter(enum.Enum):
    # Long half-life (seed: popularity over days).
    POPULARITY = "popularity"
    # Short half-life: what is rising right now.
    TRENDING = "trending"


class ItemCounters(abc.ABC):
    """Failures raise RecsysError (Unavailable when the store cannot be reached)."""

    @abc.abstractmethod
    async def record(self, events: Sequence[Interaction]) -> int:
        """Adds each event's weight (`recsys.domain.popularity.event_weight`) to its item's
        counters, at most once per event id (an id seen within the adapter's
        `event_marker_ttl_seconds` is ignored, so redelivery does not count twice). Returns
        how many events were new."""

    @abc.abstractmethod
    async def values(
        self, counter: Counter, item_ids: Sequence[int], *, now: dt.datetime | None = None
    ) -> dict[int, float]:
        """The decayed counter of each item at `now` (default: the wall clock); 0.0 for an item
        never counted."""

    @abc.abstractmethod
    async def top(self, counter: Counter, limit: int) -> list[int]:
        """Item ids by descending counter, ties by item id ascending."""

    async def close(self) -> None:
        return None
