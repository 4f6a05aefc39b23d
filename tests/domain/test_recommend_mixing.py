"""The Recommend pipeline with candidate sources merged before ranking (neighbours of the user's
history, popularity): what the scorer is given, the reasons served, and what a failing or slow
extra source costs. Same scripted fakes as tests/domain/test_recommend.py."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from recsys.domain.candidates import SourceColumn, SourceKind
from recsys.domain.recommend.pipeline import CandidateSources, RecommendPipeline
from recsys.domain.recommend.values import CandidatePool, Flag, Reason
from recsys.domain.requests import RecommendQuery, RequestContext
from recsys.domain.scoring import ScoredCandidates
from recsys.errors import FailedPrecondition, Unavailable
from recsys.ports.features import UserFeatures
from tests.domain.test_recommend import Failing, Features, Scorer, Source, World, embedding


@dataclass
class RecordingScorer(Scorer):
    """The fake scorer (higher item id first), keeping what each call was given."""

    given: list[dict[str, Any]] = field(default_factory=list)

    async def score(
        self,
        user_id: str,
        item_ids: np.ndarray,
        candidate_scores: np.ndarray,
        context: RequestContext,
        *,
        sources: Mapping[SourceKind, SourceColumn] | None = None,
        history_size: int | None = None,
    ) -> ScoredCandidates:
        self.given.append(
            {
                "item_ids": item_ids.tolist(),
                "candidate_scores": candidate_scores.tolist(),
                "sources": sources,
                "history_size": history_size,
            }
        )
        return await super().score(user_id, item_ids, candidate_scores, context)


def neighbour_source(**fields: Any) -> Source:
    # 30 is in the history, 5 retrieval found too.
    pool = CandidatePool.ranked(
        [35, 30, 36, 5], Reason.SIMILAR_TO_LIKED, scores=[0.9, 0.8, 0.7, 0.6]
    )
    return Source("neighbours", pool, **fields)


def popularity_source(**fields: Any) -> Source:
    return Source("popularity", CandidatePool.ranked([40, 36, 1], Reason.TRENDING), **fields)


@dataclass
class MixedWorld(World):
    scorer: RecordingScorer = field(default_factory=RecordingScorer)
    neighbours: Source | None = field(default_factory=neighbour_source)
    popularity: Source | None = field(default_factory=popularity_source)
    neighbours_timeout_seconds: float = 0.05

    def pipeline(self) -> RecommendPipeline:
        return RecommendPipeline(
            self.config,
            features=self.features,  # type: ignore[arg-type]
            metadata=self.metadata,  # type: ignore[arg-type]
            cache=self.cache,  # type: ignore[arg-type]
            sources=CandidateSources(
                self.personalized,
                self.fallback,
                self.cold_start,
                neighbours=self.neighbours,
                neighbours_timeout_seconds=self.neighbours_timeout_seconds,
                popularity=self.popularity,
            ),
            scorer=self.scorer,
            limiter=self.limiter,  # type: ignore[arg-type]
            observer=self.observer,
        )


def history_world(**fields: Any) -> MixedWorld:
    """30 consumed (SQL), 29 recent (feature store)."""
    world = MixedWorld(**fields)
    world.metadata.consumed = {30}
    world.features = Features(UserFeatures(embedding(), {}, (29,)))
    return world


def query(limit: int = 5, excluded: tuple[int, ...] = ()) -> RecommendQuery:
    return RecommendQuery("u1", "homepage", limit, RequestContext(), excluded_item_ids=excluded)


def column(given: dict[str, Any], source: SourceKind) -> dict[int, tuple[int, float]]:
    """The source's placement and score (to 5 places) per candidate it found."""
    found = given["sources"][source]
    return {
        item: (int(position), round(float(score), 5))
        for item, position, score in zip(
            given["item_ids"], found.positions, found.scores, strict=True
        )
        if position >= 0
    }


async def test_sources_are_merged_and_their_placements_go_to_the_scorer() -> None:
    world = history_world()
    answer = await world.pipeline().recommend(query(excluded=(2,)))
    # The neighbour source started from the whole history, SQL and recent.
    assert world.neighbours is not None
    assert world.neighbours.requests[0].history == frozenset({29, 30})
    [given] = world.scorer.given
    # Retrieval's (history and the request's exclusion left out), then the neighbours' and
    # popularity's new ones.
    assert given["item_ids"] == [1, *range(3, 29), 35, 36, 40]
    # Retrieval's scores; 0 where retrieval did not find the item.
    retrieval_scores = dict(
        zip(world.personalized.pool.item_ids, world.personalized.pool.scores, strict=True)
    )
    assert given["candidate_scores"] == pytest.approx(
        [retrieval_scores[item] for item in given["item_ids"][:-3]] + [0.0, 0.0, 0.0]
    )
    assert given["history_size"] == 2
    assert set(given["sources"]) == set(SourceKind)
    assert column(given, SourceKind.NEIGHBOURS) == {35: (0, 0.9), 36: (2, 0.7), 5: (3, 0.6)}
    assert column(given, SourceKind.POPULARITY) == {40: (0, 1.0), 36: (1, 0.66667), 1: (2, 0.33333)}
    assert column(given, SourceKind.RETRIEVAL)[1] == (0, 1.0)
    # The first source that found an item gives its reason.
    assert [(item.item_id, item.reason) for item in answer.items] == [
        (40, Reason.TRENDING),
        (36, Reason.SIMILAR_TO_LIKED),
        (35, Reason.SIMILAR_TO_LIKED),
        (28, Reason.PERSONALIZED),
        (27, Reason.PERSONALIZED),
    ]
    assert answer.index_version == "idx1"
    assert answer.explanation == "Picked for you"
    assert answer.degradation.flags() == []


async def test_a_healthy_merged_answer_is_cached() -> None:
    world = history_world()
    answer = await world.pipeline().recommend(query())
    assert answer.degradation.kinds() == []
    assert [item.item_id for item in world.cache.stored[0].items][:3] == [40, 36, 35]


@pytest.mark.parametrize(
    "error",
    [Unavailable("store gone"), FailedPrecondition("store stale"), IndexError("bad row")],
    ids=["outage", "refusal", "bug"],
)
async def test_a_failing_neighbour_source_is_flagged_and_the_answer_served(
    error: Exception,
) -> None:
    world = history_world(neighbours=neighbour_source(failure=Failing(error)))
    answer = await world.pipeline().recommend(query())
    assert [item.item_id for item in answer.items] == [40, 36, 28, 27, 26]
    assert answer.items[1].reason is Reason.TRENDING
    assert answer.degradation.partial_candidates
    assert answer.degradation.failed_candidate_sources == ("neighbours",)
    assert answer.degradation.flags() == [Flag.PARTIAL_CANDIDATES]
    [given] = world.scorer.given
    assert SourceKind.NEIGHBOURS not in given["sources"]
    assert given["history_size"] == 2
    # Degraded: not cached.
    assert world.cache.stored == []
    assert world.observer.failures[0][0] == "neighbours"


async def test_a_slow_neighbour_source_is_cut_at_its_budget() -> None:
    world = history_world(
        neighbours=neighbour_source(failure=Failing(sleep=5.0)), neighbours_timeout_seconds=0.02
    )
    started = time.perf_counter()
    answer = await world.pipeline().recommend(query())
    assert time.perf_counter() - started < 1.0
    assert [item.item_id for item in answer.items] == [40, 36, 28, 27, 26]
    assert answer.degradation.failed_candidate_sources == ("neighbours",)
    assert ("neighbours", "timeout") in world.observer.failures


async def test_a_failing_popularity_source_is_named_too() -> None:
    world = history_world(popularity=popularity_source(failure=Failing(Unavailable("db down"))))
    answer = await world.pipeline().recommend(query())
    assert [item.item_id for item in answer.items] == [36, 35, 28, 27, 26]
    assert answer.degradation.failed_candidate_sources == ("popularity",)
    assert not answer.degradation.metadata_unavailable


async def test_both_extra_sources_failing_leaves_retrieval() -> None:
    world = history_world(
        neighbours=neighbour_source(failure=Failing(sleep=5.0)),
        popularity=popularity_source(failure=Failing(Unavailable("db down"))),
        neighbours_timeout_seconds=0.02,
    )
    answer = await world.pipeline().recommend(query())
    assert [item.item_id for item in answer.items] == [28, 27, 26, 25, 24]
    assert answer.degradation.failed_candidate_sources == ("neighbours", "popularity")


async def test_without_retrieval_the_neighbours_are_ranked_with_the_fallback() -> None:
    world = history_world()
    world.personalized.failure = Failing(Unavailable("index down"))
    answer = await world.pipeline().recommend(query())
    [given] = world.scorer.given
    # The fallback's trending (40, 39) stands in for the popularity source's.
    assert given["item_ids"] == [35, 36, 5, 40, 39]
    assert given["candidate_scores"] == [0.0] * 5
    assert column(given, SourceKind.POPULARITY) == {40: (0, 1.0), 39: (1, 0.5)}
    assert world.popularity is not None
    assert world.popularity.requests == []
    assert [(item.item_id, item.reason) for item in answer.items] == [
        (40, Reason.TRENDING),
        (39, Reason.TRENDING),
        (36, Reason.SIMILAR_TO_LIKED),
        (35, Reason.SIMILAR_TO_LIKED),
        (5, Reason.SIMILAR_TO_LIKED),
    ]
    assert answer.degradation.flags() == [Flag.POPULARITY_CANDIDATES]


async def test_cold_start_users_do_not_reach_the_extra_sources() -> None:
    world = MixedWorld()
    world.features = Features(UserFeatures(None, {}, ()))
    world.cold_start = [Source("popular_in_category", CandidatePool.ranked([3], Reason.TRENDING))]
    answer = await world.pipeline().recommend(query())
    assert answer.cold_start
    assert world.neighbours is not None
    assert world.neighbours.requests == []
    assert world.scorer.given == []


async def test_without_extra_sources_the_scorer_gets_retrieval_alone() -> None:
    world = history_world(neighbours=None, popularity=None)
    answer = await world.pipeline().recommend(query())
    [given] = world.scorer.given
    assert given["item_ids"] == list(range(1, 29))
    assert given["candidate_scores"] == pytest.approx(list(world.personalized.pool.scores[:28]))
    # Called exactly as before the merge existed.
    assert (given["sources"], given["history_size"]) == (None, None)
    assert [item.item_id for item in answer.items] == [28, 27, 26, 25, 24]
    assert {item.reason for item in answer.items} == {Reason.PERSONALIZED}
    assert answer.degradation.flags() == []
