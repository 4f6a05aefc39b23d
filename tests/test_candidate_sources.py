"""The composition of Recommend's candidate sources from the settings: the neighbour store read
once per process, a store that cannot be read refused at startup, extra sources only when
configured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys.adapters.candidates.neighbours import NeighbourCandidates
from recsys.adapters.candidates.popularity import TrendingCandidates
from recsys.candidate_sources import candidate_sources
from recsys.composition import Components
from recsys.domain.recommend.values import RecommendConfig
from recsys.domain.retrieval import RetrievalQuery, RetrievalResult
from recsys.errors import ConfigurationError
from recsys.similarity.neighbours import ItemNeighbours, save_neighbours
from tests.conftest import make_settings


class Search:
    async def retrieve(self, query: RetrievalQuery) -> RetrievalResult:
        raise AssertionError("not searched while composing")


def write_store(path: Path) -> ItemNeighbours:
    weights = np.array([[0, 0.5, 0.1], [0.5, 0, 0.2], [0.1, 0.2, 0]], np.float32)
    store = ItemNeighbours(np.array([10, 20, 30], np.int64), "ease", dense=weights)
    save_neighbours(path, store)
    return store


async def test_extra_sources_are_composed_from_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "item_neighbours.npz"
    written = write_store(path)
    settings = make_settings(
        tmp_path,
        candidates={
            "neighbours_path": str(path),
            "neighbours": 7,
            "popularity": 50,
            "neighbours_timeout_ms": 30,
            "history_limit": 40,
        },
    )
    components = Components(settings)
    async with components.resources:
        sources = await candidate_sources(components, Search(), RecommendConfig(candidates=300))
        neighbours = sources.neighbours
        assert isinstance(neighbours, NeighbourCandidates)
        assert (neighbours.count, neighbours.history_limit) == (7, 40)
        np.testing.assert_array_equal(neighbours.store.item_ids, written.item_ids)
        assert sources.neighbours_timeout_seconds == pytest.approx(0.03)
        assert isinstance(sources.popularity, TrendingCandidates)
        assert sources.popularity.count == 50
        assert isinstance(sources.fallback, TrendingCandidates)
        assert sources.fallback.count == 300
        assert sources.mixed
        # Read once per process.
        assert await components.item_neighbours() is neighbours.store


async def test_without_candidates_settings_retrieval_is_alone(tmp_path: Path) -> None:
    components = Components(make_settings(tmp_path))
    async with components.resources:
        sources = await candidate_sources(components, Search(), RecommendConfig())
        assert (sources.neighbours, sources.popularity) == (None, None)
        assert not sources.mixed
        assert len(sources.cold_start) == 3


@pytest.mark.parametrize("content", [None, b"not a neighbour store"], ids=["missing", "garbage"])
async def test_an_unreadable_neighbour_store_is_refused_naming_its_path(
    tmp_path: Path, content: bytes | None
) -> None:
    path = tmp_path / "item_neighbours.npz"
    if content is not None:
        path.write_bytes(content)
    components = Components(make_settings(tmp_path, candidates={"neighbours_path": str(path)}))
    async with components.resources:
        with pytest.raises(ConfigurationError, match=str(path)):
            await candidate_sources(components, Search(), RecommendConfig())
