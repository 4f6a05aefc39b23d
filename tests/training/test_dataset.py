"""Interaction tables and the two evaluation splits."""

from __future__ import annotations

import datetime as dt

import numpy as np

from recsys.domain.interactions import Interaction, InteractionKind
from recsys.training.dataset import InteractionTable, leave_last_out, random_split

BASE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def event(user: str, item: int, minute: int) -> Interaction:
    return Interaction(
        f"{user}-{item}-{minute}",
        user,
        item,
        InteractionKind.CLICK,
        1.0,
        BASE + dt.timedelta(minutes=minute),
    )


def table_of(counts: dict[str, int], items: int = 200) -> InteractionTable:
    events = [
        event(user, (index * 7 + offset) % items, index)
        for offset, (user, count) in enumerate(counts.items())
        for index in range(count)
    ]
    return InteractionTable.from_interactions(events, list(range(items)))


def test_pairs_are_distinct_and_keep_the_latest_time() -> None:
    events = [event("u", 3, 5), event("u", 3, 9), event("u", 4, 1), event("u", 999, 2)]
    table = InteractionTable.from_interactions(events, [3, 4])
    assert len(table) == 2  # item 999 is not in the catalogue
    times = dict(zip(table.item_ids[table.item_rows].tolist(), table.times.tolist(), strict=True))
    assert times[3] == int((BASE + dt.timedelta(minutes=9)).timestamp())


def test_random_split_keeps_three_quarters_of_every_user() -> None:
    table = table_of({"a": 20, "b": 8, "c": 3, "d": 1, "e": 6, "f": 2})
    train, test = random_split(table, train_ratio=0.75, seed=1)
    assert len(train) + len(test) == len(table)
    train_counts = np.bincount(train.user_rows, minlength=table.user_count)
    # Python's rounding (half to even): 4.5 -> 4, 1.5 -> 2.
    assert train_counts.tolist() == [15, 6, 2, 1, 4, 2]
    pairs = set(zip(train.user_rows.tolist(), train.item_rows.tolist(), strict=True))
    held = set(zip(test.user_rows.tolist(), test.item_rows.tolist(), strict=True))
    assert not pairs & held


def test_random_split_is_deterministic_per_seed() -> None:
    table = table_of({"a": 40, "b": 30})
    first, _ = random_split(table, seed=5)
    again, _ = random_split(table, seed=5)
    other, _ = random_split(table, seed=6)
    assert np.array_equal(first.item_rows, again.item_rows)
    assert not np.array_equal(np.sort(first.item_rows), np.sort(other.item_rows))


def test_leave_last_out_holds_out_each_users_latest_pair() -> None:
    table = table_of({"a": 5, "b": 2, "c": 1})
    train, test = leave_last_out(table)
    assert sorted(test.user_ids[row] for row in test.user_rows) == ["a", "b"]
    for user_row, time in zip(test.user_rows, test.times, strict=True):
        assert time > train.times[train.user_rows == user_row].max()
    assert (train.user_rows == table.user_ids.index("c")).sum() == 1  # one pair: kept


def test_items_by_user_and_matrix_agree() -> None:
    table = table_of({"a": 6, "b": 4})
    matrix = table.matrix()
    for row, items in enumerate(table.items_by_user()):
        assert sorted(items.tolist()) == sorted(matrix[row].indices.tolist())


def _pairs(table: InteractionTable) -> set[tuple[str, int, int]]:
    return {
        (table.user_ids[user], int(table.item_ids[item]), int(time))
        for user, item, time in zip(table.user_rows, table.item_rows, table.times, strict=True)
    }


def test_splits_do_not_depend_on_the_input_row_order() -> None:
    rng = np.random.default_rng(0)
    events = [
        # Many pairs share a time, so leave-last-out has ties to break.
        event(f"user{user}", int(item), int(rng.integers(0, 4)))
        for user in range(30)
        for item in rng.choice(100, 12, replace=False)
    ]
    items = list(range(100))
    table = InteractionTable.from_interactions(events, items)
    shuffled = [events[i] for i in rng.permutation(len(events))]
    other = InteractionTable.from_interactions(shuffled, items[::-1])
    assert other.user_ids == table.user_ids == sorted(table.user_ids)
    assert np.array_equal(other.item_ids, table.item_ids)
    for split in (lambda t: random_split(t, seed=3), leave_last_out):
        for part, other_part in zip(split(table), split(other), strict=True):
            assert _pairs(part) == _pairs(other_part)


def test_leave_last_out_breaks_a_time_tie_by_the_highest_item_id() -> None:
    events = [event("u", 5, 1), event("u", 9, 3), event("u", 2, 3), event("u", 7, 3)]
    train, test = leave_last_out(InteractionTable.from_interactions(events, range(10)))
    assert test.item_ids[test.item_rows].tolist() == [9]
    assert sorted(train.item_ids[train.item_rows].tolist()) == [2, 5, 7]
