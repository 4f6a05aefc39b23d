"""The neighbour candidate source over a real neighbour store (EASE^R, dense and as top-k rows,
and co-occurrence), the way the pipeline calls it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.adapters.candidates.neighbours import INLINE_MAX_HISTORY, NeighbourCandidates
from recsys.domain.recommend.values import CandidatePool, Reason
from recsys.domain.requests import RecommendQuery, RequestContext
from recsys.ports.candidates import CandidateRequest
from recsys.similarity.fit import NeighbourSettings, build_neighbours
from recsys.similarity.neighbours import ItemNeighbours

ITEMS = 120
# Item ids are not row numbers: every lookup goes through the store's ids.
ITEM_IDS = np.arange(ITEMS, dtype=np.int64) * 3 + 1000

LAYOUTS = {
    "ease_dense": NeighbourSettings(ease_lambda=10.0),
    "ease_rows": NeighbourSettings(ease_lambda=10.0, dense_max_items=0, per_item=20),
    "cooccurrence": NeighbourSettings(ease_max_items=0, per_item=20),
}


def store(layout: str) -> ItemNeighbours:
    """Users who each consume a run of neighbouring items: item i goes with i +- a few."""
    rng = np.random.default_rng(7)
    rows, cols = [], []
    for user in range(600):
        start = int(rng.integers(0, ITEMS - 8))
        for item in range(start, start + int(rng.integers(3, 8))):
            rows.append(user)
            cols.append(item)
    matrix = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(600, ITEMS), dtype=np.float32
    )
    return build_neighbours(matrix, ITEM_IDS, LAYOUTS[layout])


def request(history: set[int]) -> CandidateRequest:
    query = RecommendQuery("u1", "homepage", 10, RequestContext())
    return CandidateRequest(query, None, None, history=frozenset(history))


@pytest.fixture(params=sorted(LAYOUTS))
def neighbours(request: pytest.FixtureRequest) -> ItemNeighbours:
    return store(request.param)


async def test_candidates_are_the_stores_top_with_its_scores(neighbours: ItemNeighbours) -> None:
    history = {int(ITEM_IDS[40]), int(ITEM_IDS[41])}
    source = NeighbourCandidates(neighbours, count=10, history_limit=500)
    pool = await source.candidates(request(history))
    expected = neighbours.top(history, 10)
    assert source.name == "neighbours"
    assert 0 < len(pool) <= 10
    assert pool.item_ids == tuple(expected.item_ids.tolist())
    assert pool.scores == pytest.approx(expected.scores.tolist())
    assert set(pool.reasons) == {Reason.SIMILAR_TO_LIKED}
    assert not history & set(pool.item_ids)
    # Best first (ties by item id), and the items that go with the history.
    assert list(pool.scores) == sorted(pool.scores, reverse=True)
    near = {int(item) for item in ITEM_IDS[35:47]}
    assert pool.item_ids[0] in near


async def test_no_history_or_no_count_finds_nothing(neighbours: ItemNeighbours) -> None:
    assert (
        await NeighbourCandidates(neighbours, count=10, history_limit=5).candidates(request(set()))
        == CandidatePool()
    )
    source = NeighbourCandidates(neighbours, count=0, history_limit=5)
    assert await source.candidates(request({int(ITEM_IDS[3])})) == CandidatePool()
    # Items the store does not know (added after training) have no neighbours yet.
    unknown = NeighbourCandidates(neighbours, count=10, history_limit=5)
    assert len(await unknown.candidates(request({1, 2}))) == 0


async def test_history_limit_keeps_the_highest_item_ids() -> None:
    neighbours = store("ease_dense")
    history = {int(ITEM_IDS[10]), int(ITEM_IDS[60]), int(ITEM_IDS[100])}
    limited = NeighbourCandidates(neighbours, count=15, history_limit=1)
    pool = await limited.candidates(request(history))
    expected = neighbours.top([int(ITEM_IDS[100])], 15)
    assert pool.item_ids == tuple(expected.item_ids.tolist())
    everything = await NeighbourCandidates(neighbours, count=15, history_limit=3).candidates(
        request(history)
    )
    assert everything.item_ids != pool.item_ids


async def test_a_large_history_is_scored_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    neighbours = store("ease_rows")
    threaded: list[int] = []
    real = asyncio.to_thread

    async def to_thread(function: Callable[..., Any], *args: Any) -> Any:
        threaded.append(len(function.args[0]))  # type: ignore[attr-defined]
        return await real(function, *args)

    monkeypatch.setattr(asyncio, "to_thread", to_thread)
    small = {int(item) for item in ITEM_IDS[:INLINE_MAX_HISTORY]}
    large = {int(item) for item in ITEM_IDS[: INLINE_MAX_HISTORY + 10]}
    source = NeighbourCandidates(neighbours, count=20, history_limit=500)
    inline = await source.candidates(request(small))
    assert threaded == []
    pool = await source.candidates(request(large))
    assert threaded == [INLINE_MAX_HISTORY + 10]
    for history, answer in ((small, inline), (large, pool)):
        expected = neighbours.top(history, 20)
        assert answer.item_ids == tuple(expected.item_ids.tolist())
        assert not history & set(answer.item_ids)


async def test_items_the_store_does_not_know_take_no_seed_place() -> None:
    # Items added after training have the highest ids: they must not crowd the known ones out
    # of the `history_limit` seeds (they have no neighbours to give).
    neighbours = store("ease_rows")
    known = [int(item) for item in ITEM_IDS[:6]]
    unknown = [int(ITEM_IDS.max()) + 1, int(ITEM_IDS.max()) + 2]
    source = NeighbourCandidates(neighbours, count=10, history_limit=3)
    pool = await source.candidates(request(set(known + unknown)))
    expected = neighbours.top(known[-3:], 10)
    assert pool.item_ids == tuple(expected.item_ids.tolist())
