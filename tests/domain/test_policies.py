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
    # More categories besides the primary one (normalised by ItemMetadata: sorted, primary in).
    categories=st.lists(st.sampled_from(CATEGORIES), max_size=2).map(tuple),
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
        assert item.category in item.all_categories
        if profile is not None:
            assert not set(item.all_categories) & set(profile.blocked_categories)
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


def test_a_blocked_category_blocks_an_item_whatever_its_primary_one() -> None:
    crime_drama = ItemMetadata(1, "Crime", categories=("Drama", "Crime"))
    assert crime_drama.all_categories == ("Crime", "Drama")  # sorted, the primary included
    assert ItemMetadata(2, "Jazz").all_categories == ("Jazz",)
    metadata = {1: crime_drama, 2: ItemMetadata(2, "Jazz")}
    assert privacy_filter([1, 2], metadata, UserProfile("u", blocked_categories=("Drama",)),
                          "US") == [2]  # fmt: skip
    assert privacy_filter([1, 2], metadata, UserProfile("u", blocked_categories=("Crime",)),
                          "US") == [2]  # fmt: skip
    assert privacy_filter([1, 2], metadata, UserProfile("u", blocked_categories=("News",)),
                          "US") == [1, 2]  # fmt: skip


@given(st.lists(st.tuples(st.integers(0, 5000), st.sampled_from(CATEGORIES)), max_size=80,
                unique_by=lambda pair: pair[0]))  # fmt: skip
def test_diversity_caps_the_window_and_keeps_every_item(ranked: list[tuple[int, str]]) -> None:
    ids = [item for item, _ in ranked]
    categories = dict(ranked)
    result = diversify(ids, {item: (categories[item],) for item in ids}, max_per_category=3,
                       window=20)  # fmt: skip
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
    categories = {item: (CATEGORIES[item // 10],) for item in range(80)}
    result = diversify(list(range(80)), categories)
    assert result[:6] == [0, 1, 2, 10, 11, 12]
    assert result[18:21] == [60, 61, 3]  # the window is full: rank order resumes


def greedy_head(
    ids: list[int], labels: dict[int, tuple[str, ...]], cap: int, window: int
) -> list[int]:
    """The reference: the window filled in rank order, an item taken while each of its
    categories holds fewer than `cap` items."""
    head: list[int] = []
    taken: Counter[str] = Counter()
    for item in ids:
        if len(head) < window and all(taken[category] < cap for category in labels[item]):
            head.append(item)
            taken.update(labels[item])
    return head


@given(st.lists(st.tuples(st.integers(0, 5000),
                          st.lists(st.sampled_from(CATEGORIES), min_size=1, max_size=3, unique=True)
                          .map(lambda chosen: tuple(sorted(chosen)))),
                max_size=80, unique_by=lambda pair: pair[0]),
       st.integers(1, 4), st.integers(1, 25))  # fmt: skip
def test_an_item_of_several_categories_counts_towards_each(
    ranked: list[tuple[int, tuple[str, ...]]], max_per_category: int, window: int
) -> None:
    ids = [item for item, _ in ranked]
    labels = dict(ranked)
    result = diversify(ids, labels, max_per_category=max_per_category, window=window)
    assert sorted(result) == sorted(ids)
    head_size = min(window, len(ids))
    head, rest = result[:head_size], result[head_size:]
    # The head and what follows it each keep rank order.
    assert head == [item for item in ids if item in set(head)]
    assert rest == [item for item in ids if item not in set(head)]
    # The cap is the smallest, at least the seed's, under which rank order fills the window.
    cap = max_per_category
    while len(greedy_head(ids, labels, cap, window)) < head_size:
        cap += 1
    assert head == greedy_head(ids, labels, cap, window)
    per_category = Counter(category for item in head for category in labels[item])
    assert max(per_category.values(), default=0) <= cap


def test_diversity_example_with_items_of_several_categories() -> None:
    # Item 2 is Comedy and Drama: with Drama at its cap of 2 it waits, although Comedy is free.
    labels = {
        0: ("Drama",),
        1: ("Drama",),
        2: ("Comedy", "Drama"),
        3: ("Comedy",),
        4: ("Jazz",),
        5: ("Comedy",),
        6: ("Comedy", "Jazz"),
    }
    assert diversify(list(range(7)), labels, max_per_category=2, window=4) == [0, 1, 3, 4, 2, 5, 6]
    # Four Drama items cannot fill a window of four two at a time: the cap rises to 4.
    everything_drama = dict.fromkeys(range(4), ("Drama",)) | {0: ("Comedy", "Drama")}
    assert diversify([0, 1, 2, 3], everything_drama, max_per_category=2, window=4) == [0, 1, 2, 3]
