"""Privacy filters and the diversity rule (pure functions over item metadata)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from recsys.ports.metadata import ItemMetadata, UserProfile

ADULT_AGE = 18


def allowed_by_privacy(
    item: ItemMetadata | None, profile: UserProfile | None, country: str
) -> bool:
    """Blocked categories (any of the item's), no adult items under 18, regional availability.
    An item without metadata is refused: the filters cannot be proven for it (fail closed)."""
    if item is None:
        return False
    if profile is not None:
        blocked = profile.blocked_categories
        if blocked and any(category in blocked for category in item.all_categories):
            return False
        if item.adult and (profile.age is None or profile.age < ADULT_AGE):
            return False
    elif item.adult:
        return False  # unknown age: treated as a minor
    if item.available_regions:
        region = country or (profile.country if profile else None) or ""
        if region not in item.available_regions:
            return False
    return True


def privacy_filter(
    item_ids: Iterable[int],
    metadata: Mapping[int, ItemMetadata],
    profile: UserProfile | None,
    country: str,
) -> list[int]:
    return [item for item in item_ids if allowed_by_privacy(metadata.get(item), profile, country)]


def diversify(
    item_ids: Sequence[int],
    categories: Mapping[int, tuple[str, ...]],
    *,
    max_per_category: int = 3,
    window: int = 20,
) -> list[int]:
    """Reorders a ranked list so that the first `window` items hold at most `max_per_category`
    items of any category (seed: 3 in the top 20), keeping rank order otherwise. An item of
    several categories counts towards each of them: it enters the window only while every one
    of its categories is under the cap. When the candidates cannot fill the window that way
    (too few categories, or most items in one), the cap rises to the smallest that fills it
    (from `diversity_cap`, which is exact for items of one category each). Nothing is dropped:
    items beyond the capped head follow it in rank order. An item without categories counts
    as one of the category ""."""
    labels = {item: tuple(dict.fromkeys(categories.get(item) or ("",))) for item in item_ids}
    per_category = Counter(category for item in item_ids for category in labels[item])
    cap = diversity_cap(per_category.values(), max_per_category=max_per_category, window=window)
    target = min(window, len(item_ids))
    while True:
        head, deferred = _capped_head(item_ids, labels, cap=cap, window=window)
        # Once the cap reaches the window no category can refuse an item of it: always full.
        if len(head) >= target or cap >= window:
            return head + deferred
        cap += 1


def _capped_head(
    item_ids: Sequence[int], labels: Mapping[int, tuple[str, ...]], *, cap: int, window: int
) -> tuple[list[int], list[int]]:
    """The window filled in rank order under `cap`, and the items left for after it."""
    head: list[int] = []
    deferred: list[int] = []
    taken: Counter[str] = Counter()
    for item in item_ids:
        own = labels[item]
        if len(head) < window and all(taken[category] < cap for category in own):
            head.append(item)
            taken.update(own)
        else:
            deferred.append(item)
    return head, deferred


def diversity_cap(
    category_counts: Iterable[int], *, max_per_category: int = 3, window: int = 20
) -> int:
    """The smallest per-category cap, at least `max_per_category`, that can fill the window
    with items of one category each (`category_counts`: items per category). For items of
    several categories it is a lower bound: each item uses up a place of every category."""
    counts = list(category_counts)
    target = min(window, sum(counts))
    cap = max_per_category
    while sum(min(cap, count) for count in counts) < target:
        cap += 1
    return cap
