"""ItemCounters adapters, and what they share: each event's log-space increments, computed in
Python (`recsys.domain.popularity`) so every adapter counts by one formula."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from recsys.domain.interactions import Interaction
from recsys.domain.popularity import as_utc, event_weight, log_increment
from recsys.ports.counters import Counter
from recsys.settings import RecsysSettings


@dataclass(frozen=True, slots=True)
class Increment:
    """One event to count: log2 of its term per counter (`log_increment`)."""

    event_id: str
    item_id: int
    terms: dict[Counter, float]


def half_lives(settings: RecsysSettings) -> dict[Counter, float]:
    """Half-life in seconds of each counter, from settings.realtime."""
    realtime = settings.realtime
    return {
        Counter.POPULARITY: realtime.popularity_half_life_hours * 3600,
        Counter.TRENDING: realtime.trending_half_life_minutes * 60,
    }


def increments(
    events: Sequence[Interaction], half_life_seconds: Mapping[Counter, float], now: dt.datetime
) -> list[Increment]:
    """The events that count (a weight above 0 and a time). A time after `now` counts as `now`:
    a client's clock running ahead must not lift an item above every other for good (the
    counter of a future event only grows until then)."""
    counted: list[Increment] = []
    for event in events:
        weight = event_weight(event.kind, event.value)
        if event.event_time is None or weight <= 0:
            continue
        moment = min(as_utc(event.event_time), as_utc(now))
        terms = {
            counter: log_increment(moment, weight, half_life)
            for counter, half_life in half_life_seconds.items()
        }
        counted.append(Increment(event.event_id, event.item_id, terms))
    return counted


def wall_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
