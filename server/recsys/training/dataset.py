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
    `user_ids` and `item_ids`, with the event time in seconds."""

    user_ids: list[str]
    item_ids: IntArray
    user_rows: IntArray
    item_rows: IntArray
    times: IntArray

    @classmethod
    def from_interactions(
        cls, interactions: Sequence[Interaction], item_ids: Sequence[int]
    ) -> InteractionTable:
        """Pairs of known items only; users in order of first appearance."""
        item_position = {int(item): row for row, item in enumerate(item_ids)}
        user_position: dict[str, int] = {}
        latest: dict[tuple[int, int], int] = {}
        for event in interactions:
            item_row = item_position.get(event.item_id)
            if item_row is None:
                continue
            user_row = user_position.setdefault(event.user_id, len(user_position))
            seconds = int(event.event_time.timestamp()) if event.event_time else 0
            key = (user_row, item_row)
            if seconds >= latest.get(key, -(1 << 62)):
                latest[key] = seconds
        pairs = np.array(list(latest), dtype=np.int64).reshape(-1, 2)
        return cls(
            user_ids=list(user_position),
            item_ids=np.asarray(item_ids, dtype=np.int64),
            user_rows=pairs[:, 0].copy(),
            item_rows=pairs[:, 1].copy(),
            times=np.fromiter(latest.values(), dtype=np.int64, count=len(latest)),
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
    `python_stratified_split`): each user keeps round(ratio * n) of their pairs for training."""
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
    """Time-based: each user's latest pair is held out (users with one pair keep it)."""
    order = np.lexsort((np.arange(len(table)), table.times, table.user_rows))
    users = table.user_rows[order]
    last = np.r_[users[1:] != users[:-1], True]
    counts = np.bincount(table.user_rows, minlength=table.user_count)
    held_out = np.zeros(len(table), dtype=bool)
    held_out[order] = last & (counts[users] > 1)
    return table.subset(~held_out), table.subset(held_out)
