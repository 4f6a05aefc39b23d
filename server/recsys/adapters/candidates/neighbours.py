"""Item-to-item neighbours of the user's history, from the store `recsys train` writes
(recsys.similarity.neighbours): EASE^R weights or cosine co-occurrence."""

from __future__ import annotations

import asyncio
import functools

from recsys.domain.recommend.values import CandidatePool, Reason
from recsys.ports.candidates import CandidateRequest
from recsys.similarity.neighbours import ItemNeighbours

# Above this many history items the sums run in a thread: a few hundred dense rows of a
# 5,000-item store cost milliseconds, too long to hold the event loop for.
INLINE_MAX_HISTORY = 64


class NeighbourCandidates:
    name = "neighbours"

    def __init__(self, store: ItemNeighbours, *, count: int, history_limit: int) -> None:
        self.store = store
        self.count = count
        self.history_limit = history_limit

    async def candidates(self, request: CandidateRequest) -> CandidatePool:
        if not request.history or self.count <= 0:
            return CandidatePool()
        # The history arrives as a set: the highest item ids the store knows stand in for the
        # latest ones (`ItemNeighbours.seed_rows`, as in training).
        history = sorted(request.history)
        top = functools.partial(
            self.store.top, history, self.count, history_limit=self.history_limit
        )
        if len(history) > INLINE_MAX_HISTORY:
            found = await asyncio.to_thread(top)
        else:
            found = top()
        return CandidatePool.ranked(
            found.item_ids.tolist(), Reason.SIMILAR_TO_LIKED, scores=found.scores.tolist()
        )
