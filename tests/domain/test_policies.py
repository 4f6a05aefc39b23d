"""Privacy filters and the diversity rule as properties (hypothesis)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from recsys.domain.policies import allowed_by_privacy, diversify, diversity_cap, privacy_filter
from recsys.ports.metadata import ItemMetadata, UserProfile

CATEGORIES = ["Action", "Comedy", "Drama", "Horror", "Kids", "News", "Sport", "Jazz"]
COUNTRIES = ["US", "DE", "FR", ""]

items = st.builds(
    ItemMetadata,
    item_id=st.integers(0, 10_000),
    category=st.sampled_from(CATEGORIES),
    adult=st.booleans(),
    available_regions=st.lists(st.sampled_from(COUNTRIES[:3]), max_size=2).map(tuple),
)
profiles = st.one_of(
    st.none(),
    st.builds(
        UserProfile,
        user_id=st.just("u"),
        age=st.one_of(st.none(), st.integers(0, 99)),
        country=st.one_of(st.none(), st.sampled_from(COUNTRIES[:3])),
        blocked_categories=st.lists(st.sampled_from(CATEGORIES), max_size=3).map(tuple),
    ),
)


@given(st.lists(items, max_size=60, unique_by=lambda item: item.item_id), profiles,
       st.sampled_from(COUNTRIES))  # fmt: skip
def test_privacy_filter_never_lets_a_forbidden_item_through(
    catalogue: list[ItemMetadata], profile: UserProfile | None, country: str
) -> None:
    metadata = {item.item_id: item for item in catalogue}
    kept = privacy_filter([item.item_id for item in catalogue], metadata, profile, country)
    region = country or (profile.country if profile else None) or ""
    for item_id in kept:
        item = metadata[item_id]
        if profile is not None:
            assert item.category not in profile.blocked_categories
        if item.adult:
            assert profile is not None
            assert profile.age is not None
            assert profile.age >= 18
        if item.available_regions:
            assert region in item.available_regions
    # ...and drops only what a rule forbids.
    dropped = set(metadata) - set(kept)
    assert all(not allowed_by_privacy(metadata[item], profile, country) for item in dropped)


def test_items_without_metadata_are_dropped() -> None:
    assert privacy_filter([1, 2], {1: ItemMetadata(1, "Action")}, None, "US") == [1]


@given(st.lists(st.tuples(st.integers(0, 5000), st.sampled_from(CATEGORIES)), max_size=80,
                unique_by=lambda pair: pair[0]))  # fmt: skip
def test_diversity_caps_the_window_and_keeps_every_item(ranked: list[tuple[int, str]]) -> None:
    ids = [item for item, _ in ranked]
    categories = dict(ranked)
    result = diversify(ids, categories, max_per_category=3, window=20)
    assert sorted(result) == sorted(ids)  # a permutation: nothing lost or invented
    if not ids:
        return
    per_category = Counter(categories.values())
    cap = diversity_cap(per_category.values())
    head = Counter(categories[item] for item in result[:20])
    assert max(head.values()) <= cap
    if sum(min(3, count) for count in per_category.values()) >= min(20, len(ids)):
        assert cap == 3  # feasible: the seed's rule exactly
        assert max(head.values()) <= 3
    # Within one category, rank order is kept.
    for category in per_category:
        ranked_order = [item for item in ids if categories[item] == category]
        assert [item for item in result if categories[item] == category] == ranked_order


def test_diversity_example() -> None:
    # Eight categories of ten items, ranked category by category.
    categories = {item: CATEGORIES[item // 10] for item in range(80)}
    result = diversify(list(range(80)), categories)
    assert result[:6] == [0, 1, 2, 10, 11, 12]
    assert result[18:21] == [60, 61, 3]  # the window is full: rank order resumes
