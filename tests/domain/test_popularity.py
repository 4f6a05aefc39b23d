"""Decaying counters in log space: each event's term, the stable addition, and the value read
back agree with the direct sum (`recount`) whatever the order of the adds."""

from __future__ import annotations

import datetime as dt
import math
import random

import pytest

from recsys.domain.interactions import Interaction, InteractionKind
from recsys.domain.popularity import (
    EPOCH,
    decayed,
    event_weight,
    log_add,
    log_increment,
    recount,
    unix_milliseconds,
)

HOUR = 3600.0
NOW = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)


def event(
    item_id: int,
    minutes_ago: float,
    kind: InteractionKind | None = InteractionKind.VIEW,
    value: float = 0.0,
) -> Interaction:
    moment = NOW - dt.timedelta(minutes=minutes_ago)
    return Interaction(f"e-{item_id}-{minutes_ago}", "u1", item_id, kind, value, moment)


def test_weights_grow_with_intent_and_skips_count_nothing() -> None:
    weights = [
        event_weight(kind, 0.0)
        for kind in (
            InteractionKind.VIEW,
            InteractionKind.LIKE,
            InteractionKind.ADD_TO_CART,
            InteractionKind.PURCHASE,
        )
    ]
    assert weights == [1.0, 2.0, 3.0, 5.0]
    assert event_weight(InteractionKind.CLICK, 0.0) == 1.0
    assert event_weight(InteractionKind.SKIP, 1.0) == 0.0
    assert event_weight(None, 1.0) == 0.0


@pytest.mark.parametrize(
    ("rating", "weight"), [(0.0, 1.0), (2.5, 1.5), (5.0, 2.0), (9.0, 2.0), (-3.0, 1.0)]
)
def test_a_rating_weighs_from_one_to_two_clamped(rating: float, weight: float) -> None:
    assert event_weight(InteractionKind.RATE, rating) == weight


def test_a_rating_that_is_not_a_number_weighs_as_zero_stars() -> None:
    assert event_weight(InteractionKind.RATE, math.nan) == 1.0
    assert event_weight(InteractionKind.RATE, math.inf) == 1.0


def test_an_increment_at_the_epoch_is_the_weights_log() -> None:
    assert log_increment(EPOCH, 4.0, HOUR) == 2.0
    assert log_increment(EPOCH + dt.timedelta(hours=3), 1.0, HOUR) == pytest.approx(3.0)
    assert log_increment(EPOCH, 0.0, HOUR) == -math.inf
    # A naive time is UTC.
    assert log_increment(EPOCH.replace(tzinfo=None), 4.0, HOUR) == 2.0


def test_log_add_is_the_log_of_the_sum_without_overflow() -> None:
    assert log_add(3.0, 3.0) == pytest.approx(4.0)
    assert log_add(1.0, 2.0) == pytest.approx(math.log2(6.0))
    assert log_add(-math.inf, 5.0) == 5.0
    assert log_add(5.0, -math.inf) == 5.0
    # 2^60000 overflows a double; the sum's log does not.
    assert log_add(60_000.0, 60_000.0) == pytest.approx(60_001.0)
    assert log_add(60_000.0, 0.0) == 60_000.0


def test_a_counter_halves_every_half_life() -> None:
    log_value = log_increment(NOW, 3.0, HOUR)
    assert decayed(log_value, NOW, HOUR) == pytest.approx(3.0, rel=1e-10)
    assert decayed(log_value, NOW + dt.timedelta(hours=1), HOUR) == pytest.approx(1.5, rel=1e-10)
    assert decayed(log_value, NOW + dt.timedelta(hours=3), HOUR) == pytest.approx(0.375, rel=1e-10)
    assert decayed(-math.inf, NOW, HOUR) == 0.0
    # Read long before the event: inf, not an OverflowError.
    assert decayed(log_value, NOW - dt.timedelta(days=365), HOUR) == math.inf


def test_the_order_of_adds_does_not_change_the_value() -> None:
    rng = random.Random(7)
    events = [
        event(1, rng.uniform(0, 600), rng.choice(list(InteractionKind)), rng.uniform(0, 5))
        for _ in range(500)
    ]
    terms = [
        log_increment(item.event_time, event_weight(item.kind, item.value), HOUR)
        for item in events
        if item.event_time is not None
    ]
    expected = recount(events, HOUR, NOW)[1]
    values = []
    for _ in range(5):
        rng.shuffle(terms)
        total = -math.inf
        for term in terms:
            total = log_add(total, term)
        values.append(decayed(total, NOW, HOUR))
    for value in values:
        assert value == pytest.approx(expected, rel=1e-9)
    assert max(values) - min(values) <= 1e-9 * expected


def test_recount_sums_decayed_weights_per_item_and_skips_what_does_not_count() -> None:
    events = [
        event(1, 0),
        event(1, 60, InteractionKind.PURCHASE),
        event(2, 120, InteractionKind.LIKE),
        event(3, 0, InteractionKind.SKIP),
        Interaction("no-time", "u1", 4, InteractionKind.VIEW, 0.0, None),
    ]
    totals = recount(events, HOUR, NOW)
    assert totals == pytest.approx({1: 1.0 + 2.5, 2: 0.5})


def test_unix_milliseconds_are_exact_and_round_down() -> None:
    moment = dt.datetime(2026, 12, 1, 0, 0, 0, 999_999, tzinfo=dt.UTC)
    assert unix_milliseconds(moment) == 1_796_083_200_999
    assert unix_milliseconds(moment.replace(tzinfo=None)) == 1_796_083_200_999
