"""Selection over items of several categories: a category request, the privacy filter and
diversity read every category of an item; the answer names its primary one."""

from __future__ import annotations

from recsys.domain.recommend.selection import CATEGORY_MATCH_BONUS, cold_start_ranking, select
from recsys.domain.recommend.values import CandidatePool, Reason, RecommendConfig
from recsys.domain.requests import RecommendQuery, RequestContext
from recsys.ports.metadata import ItemMetadata, UserProfile

METADATA = {
    1: ItemMetadata(1, "Crime", popularity=0.1, categories=("Crime", "Drama")),
    2: ItemMetadata(2, "Drama", popularity=0.2),
    3: ItemMetadata(3, "Comedy", popularity=0.3),
    4: ItemMetadata(4, "Noir", popularity=0.4, categories=("Crime", "Noir")),
    5: ItemMetadata(5, "Romance", popularity=0.5, categories=("Comedy", "Romance")),
}
POOL = CandidatePool.ranked([1, 2, 3, 4, 5], Reason.PERSONALIZED)


def chosen(
    category: str | None = None,
    profile: UserProfile | None = None,
    config: RecommendConfig | None = None,
) -> list[tuple[int, str]]:
    query = RecommendQuery("u", "homepage", 10, RequestContext(country="US", category=category))
    answer = select(
        POOL,
        query=query,
        profile=profile,
        excluded=frozenset(),
        metadata=METADATA,
        config=config or RecommendConfig(diversity_enabled=False),
    )
    return [(item.item_id, item.category) for item in answer]


def test_a_category_request_keeps_items_having_it_among_any() -> None:
    assert chosen("Crime") == [(1, "Crime"), (4, "Noir")]
    assert chosen("Drama") == [(1, "Crime"), (2, "Drama")]
    assert chosen("Comedy") == [(3, "Comedy"), (5, "Romance")]
    assert chosen("Jazz") == []


def test_a_blocked_category_removes_every_item_having_it() -> None:
    profile = UserProfile("u", age=30, blocked_categories=("Drama",))
    assert [item for item, _ in chosen(profile=profile)] == [3, 4, 5]


def test_diversity_counts_an_item_in_each_of_its_categories() -> None:
    # One item per category in a window of two: item 2 (Drama) waits behind 1 (Crime|Drama).
    config = RecommendConfig(diversity_max_per_category=1, diversity_window=2)
    assert [item for item, _ in chosen(config=config)] == [1, 3, 2, 4, 5]
    # A window of three cannot be filled one a category (4 is Crime, 5 Comedy, like 1 and 3):
    # the cap rises to 2, and rank order fills it.
    config = RecommendConfig(diversity_max_per_category=1, diversity_window=3)
    assert [item for item, _ in chosen(config=config)] == [1, 2, 3, 4, 5]


def test_cold_start_matches_any_wanted_category() -> None:
    ranked = cold_start_ranking(POOL, METADATA, {"Drama", "Romance"})
    scores = dict(zip(ranked.item_ids, ranked.scores, strict=True))
    assert scores[1] == METADATA[1].popularity + CATEGORY_MATCH_BONUS  # Drama, not primary
    assert scores[5] == METADATA[5].popularity + CATEGORY_MATCH_BONUS
    assert scores[3] == METADATA[3].popularity
    assert ranked.item_ids == (5, 2, 1, 4, 3)
