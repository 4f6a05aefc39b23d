"""RecommendService in the embedded mode with the neighbour and popularity sources merged into
retrieval's candidates: the store read at startup, the merged pool ranked and served."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys.similarity.neighbours import ItemNeighbours, save_neighbours
from recsys.v1 import recommend_service_pb2
from recsys_client import AsyncRecsysClient, ClientOptions
from tests.support.world import ITEMS, build_world

# Alice consumed 10, 11 and 12 (tests/support/world.py); their neighbours are 200..229 only.
NEIGHBOURS = range(200, 230)


def write_store(path: Path) -> None:
    weights = np.zeros((ITEMS, ITEMS), np.float32)
    for row in (10, 11, 12):
        weights[row, list(NEIGHBOURS)] = np.linspace(1.0, 0.1, len(NEIGHBOURS))
    save_neighbours(path, ItemNeighbours(np.arange(ITEMS, dtype=np.int64), "ease", dense=weights))


async def test_neighbours_of_the_history_are_merged_ranked_and_served(tmp_path: Path) -> None:
    store = tmp_path / "item_neighbours.npz"
    write_store(store)
    app = await build_world(
        tmp_path,
        recommend={"candidates": 20},
        candidates={"neighbours_path": str(store), "neighbours": 30, "popularity": 10},
    )
    try:
        options = ClientOptions(target=app.address, timeout_seconds=10, retry=None)
        async with AsyncRecsysClient(options) as client:
            response = await client.recommend("alice", surface="homepage", limit=100)
    finally:
        await app.shutdown()
    degradation = response.degradation
    assert not degradation.partial_candidates
    assert not degradation.popularity_candidates
    assert not degradation.fallback_ranking
    similar = [
        item.item_id
        for item in response.items
        if item.reason == recommend_service_pb2.RECOMMENDATION_REASON_SIMILAR_TO_LIKED
    ]
    assert similar
    assert set(similar) <= set(NEIGHBOURS)
    # More than retrieval's 20 alone could give, history left out.
    assert len(response.items) > 20
    assert not {10, 11, 12} & {item.item_id for item in response.items}
