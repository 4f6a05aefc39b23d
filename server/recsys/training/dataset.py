"""Interactions as arrays (one row per user-item pair) and the two evaluation splits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recsys.data.catalogue import Catalogue
from recsys.domain.interactions import Interaction

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class InteractionTable:
    """Distinct user-item pairs (the latest event of a pair kept) as index arrays into
    `user_ids` and `item_ids`, with the event time in seconds.

    The table is canonical whatever order its input came in: users sorted by id, items by id
    (so item rows follow item ids), pairs by (user, time, item). Splits and training then
    depend on the data, not on the order of its file's rows."""

    user_ids: list[str]
    item_ids: IntArray
    user_rows: IntArray
    item_rows: IntArray
    times: IntArray

    @classmethod
    def from_interactions(
        cls, interactions: Sequence[Interaction], item_ids: Sequence[int]
    ) -> InteractionTable:
        """Pairs of known items only."""
        ordered_items = np.unique(np.asarray(item_ids, dtype=np.int64))
        item_position = {int(item): row for row, item in enumerate(ordered_items.tolist())}
        latest: dict[tuple[str, int], int] = {}
        for event in interactions:
            item_row = item_position.get(event.item_id)
            if item_row is None:
                continue
            seconds = int(event.event_time.timestamp()) if event.event_time else 0
            key = (event.user_id, item_row)
            if seconds > latest.get(key, -(1 << 62)):
                latest[key] = seconds
        user_ids = sorted({user for user, _ in latest})
        user_position = {user: row for row, user in enumerate(user_ids)}
        count = len(latest)
        user_rows = np.fromiter((user_position[user] for user, _ in latest), np.int64, count)
        item_rows = np.fromiter((item for _, item in latest), np.int64, count)
        times = np.fromiter(latest.values(), np.int64, count)
        order = np.lexsort((item_rows, times, user_rows))
        return cls(
            user_ids=user_ids,
            item_ids=ordered_items,
            user_rows=user_rows[order],
            item_rows=item_rows[order],
            times=times[order],
        )

    @classmethod
    def from_catalogue(cls, catalogue: Catalogue) -> InteractionTable:
        return cls.from_interactions(
            catalogue.interactions, [item.item_id for item in catalogue.items]
        )

    def __len__(self) -> int:
        return len(self.user_rows)

    @property
    def user_count(self) -> int:
        return len(self.user_ids)

    @property
    def item_count(self) -> int:
        return len(self.item_ids)

    def subset(self, mask: npt.NDArray[np.bool_]) -> InteractionTable:
        """The rows where `mask` holds, over the same users and items."""
        return InteractionTable(
            self.user_ids,
            self.item_ids,
            self.user_rows[mask],
            self.item_rows[mask],
            self.times[mask],
        )

    def matrix(self) -> sp.csr_matrix:
        """users x items, 1 where a pair exists."""
        values = np.ones(len(self), dtype=np.float32)
        shape = (self.user_count, self.item_count)
        return sp.csr_matrix((values, (self.user_rows, self.item_rows)), shape=shape)

    def items_by_user(self) -> list[IntArray]:
        """Item rows of each user, in the order of user rows."""
        order = np.argsort(self.user_rows, kind="stable")
        bounds = np.searchsorted(self.user_rows[order], np.arange(self.user_count + 1))
        items = self.item_rows[order]
        return [items[bounds[row] : bounds[row + 1]] for row in range(self.user_count)]


def random_split(
    table: InteractionTable, *, train_ratio: float = 0.75, seed: int = 42
) -> tuple[InteractionTable, InteractionTable]:
    """Per-user random split (stratified by user, as Microsoft Recommenders'
    `python_stratified_split`): each user keeps round(ratio * n) of their pairs for training.
    The random keys follow the table's canonical (user, time, item) order, so the split does
    not depend on the input's row order."""
    if not 0 < train_ratio < 1:
        raise ValueError("train_ratio must be in (0, 1)")
    rng = np.random.default_rng(seed)
    keys = rng.random(len(table))
    order = np.lexsort((keys, table.user_rows))
    users = table.user_rows[order]
    starts = np.searchsorted(users, users, side="left")
    position = np.arange(len(order)) - starts
    counts = np.bincount(table.user_rows, minlength=table.user_count)
    keep = np.round(counts[users] * train_ratio).astype(np.int64)
    train = np.zeros(len(table), dtype=bool)
    train[order] = position < keep
    return table.subset(train), table.subset(~train)


def leave_last_out(table: InteractionTable) -> tuple[InteractionTable, InteractionTable]:
    """Time-based: each user's latest pair is held out (users with one pair keep it); of
    several pairs with the latest time, the one with the highest item id."""
    order = np.lexsort((table.item_rows, table.times, table.user_rows))
    users = table.user_rows[order]
    last = np.r_[users[1:] != users[:-1], True]
    counts = np.bincount(table.user_rows, minlength=table.user_count)
    held_out = np.zeros(len(table), dtype=bool)
    held_out[order] = last & (counts[users] > 1)
    return table.subset(~held_out), table.subset(held_out)
