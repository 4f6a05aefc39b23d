"""Item counters that decay exponentially by event time, kept in log space (base 2).

A counter's value at `now` is the sum over its events of weight * 2^(-(now - event_time) /
half_life). Written relative to a fixed EPOCH, each term is 2^(log2(weight) + (event_time -
EPOCH) / half_life) * 2^(-(now - EPOCH) / half_life): the first factor never changes once the
event is counted, so a store keeps log2 of the sum of first factors (`log_add` of the events'
`log_increment`s) and applies the second factor only when read (`decayed`). No decay job runs,
and since the second factor is common to all items, ordering by the stored value is ordering
by the counter at any time.

Precision: a stored value is about (now - EPOCH) / half_life, so its last bit is worth a
relative 2^-52 of that: near 1e-11 of the counter for a one-hour half-life in 2026, 1e-9 for a
one-minute one.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable

from recsys.domain.interactions import Interaction, InteractionKind

EPOCH = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
UNIX_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# What one event adds to its item's counters: stronger intent weighs more. A skip is a
# negative signal and counts nothing (a counter only grows).
WEIGHTS = {
    InteractionKind.VIEW: 1.0,
    InteractionKind.CLICK: 1.0,
    InteractionKind.LIKE: 2.0,
    InteractionKind.ADD_TO_CART: 3.0,
    InteractionKind.PURCHASE: 5.0,
    InteractionKind.SKIP: 0.0,
}
MAX_RATING = 5.0


def event_weight(kind: InteractionKind | None, value: float) -> float:
    """The event's weight; 0 means not counted (skips, and events without a kind).

    A rating says the user engaged with the item (as much as a view) plus how much they liked
    it: 1 + rating / 5, with the rating clamped to [0, 5], so from 1 (like a view) to 2 (like a
    like). A rating that is not a finite number counts as 0 stars."""
    if kind is None:
        return 0.0
    if kind is InteractionKind.RATE:
        rating = value if math.isfinite(value) else 0.0
        return 1.0 + min(max(rating, 0.0), MAX_RATING) / MAX_RATING
    return WEIGHTS[kind]


def as_utc(moment: dt.datetime) -> dt.datetime:
    """A naive datetime is taken as UTC (the metadata store and the protos keep UTC)."""
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment


def unix_milliseconds(moment: dt.datetime) -> int:
    """Whole milliseconds since 1970 (rounded down), in exact integer arithmetic."""
    return (as_utc(moment) - UNIX_EPOCH) // dt.timedelta(milliseconds=1)


def half_lives_since_epoch(moment: dt.datetime, half_life_seconds: float) -> float:
    return (as_utc(moment) - EPOCH).total_seconds() / half_life_seconds


def log_increment(event_time: dt.datetime, weight: float, half_life_seconds: float) -> float:
    """log2 of the event's term, relative to EPOCH; -inf for weight 0."""
    if weight <= 0:
        return -math.inf
    return math.log2(weight) + half_lives_since_epoch(event_time, half_life_seconds)


def log_add(first: float, second: float) -> float:
    """log2(2^first + 2^second), without overflow: the larger plus log2(1 + 2^-difference)."""
    high, low = (first, second) if first >= second else (second, first)
    if low == -math.inf:
        return high
    return high + math.log1p(2.0 ** (low - high)) / math.log(2.0)


def decayed(log_value: float, now: dt.datetime, half_life_seconds: float) -> float:
    """The counter's value at `now`; 0.0 for -inf (never counted)."""
    exponent = log_value - half_lives_since_epoch(now, half_life_seconds)
    # 2.0 ** 1024 raises OverflowError rather than returning inf (a `now` far before the events).
    return math.inf if exponent >= 1024 else 2.0**exponent


def recount(
    events: Iterable[Interaction], half_life_seconds: float, now: dt.datetime
) -> dict[int, float]:
    """The counters computed directly from the events (each once, as given), for comparing a
    store against: item id -> decayed value at `now`. Events without a time or weight count
    nothing."""
    totals: dict[int, float] = {}
    for event in events:
        weight = event_weight(event.kind, event.value)
        if event.event_time is None or weight <= 0:
            continue
        age = (as_utc(now) - as_utc(event.event_time)).total_seconds() / half_life_seconds
        totals[event.item_id] = totals.get(event.item_id, 0.0) + weight * 2.0 ** (-age)
    return totals
