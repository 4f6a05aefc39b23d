"""Top-k metrics over recommendation lists (pure functions).

Relevance is binary (an item of the user's held-out set). Averages run over the users with at
least one held-out item, as in Microsoft Recommenders' `python_evaluation`:
- precision@k = hits / k; recall@k = hits / |relevant|;
- NDCG@k: DCG with gain 1/log2(rank + 1) over the ideal DCG of min(k, |relevant|) hits;
- MAP@k: the mean over users of the sum of precision@i at each hit i <= k, divided by
  min(k, |relevant|);
- coverage: distinct items recommended over all users / catalogue size;
- intra-list diversity: per list, the share of item pairs that share no category (items are
  multi-label: a pair sharing any one category counts as similar).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TopKMetrics:
    users: int
    precision: float
    recall: float
    ndcg: float
    map: float
    coverage: float
    diversity: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _discount(rank: int) -> float:
    return 1.0 / math.log2(rank + 2)


def evaluate_lists(
    recommended: Mapping[str, Sequence[int]],
    relevant: Mapping[str, set[int]],
    *,
    category_of: Mapping[int, Collection[str]],
    catalogue_size: int,
    k: int = 10,
) -> TopKMetrics:
    """`recommended[user]`: ranked item ids (the first k count); `relevant[user]`: held-out
    item ids; `category_of[item]`: every category of the item. Users without a relevant item
    are left out; a user without a list scores 0."""
    users = [user for user, items in relevant.items() if items]
    if not users:
        raise ValueError("no user has a relevant item")
    precision = recall = ndcg = average_precision = diversity = 0.0
    shown: set[int] = set()
    for user in users:
        items = list(recommended.get(user, ()))[:k]
        wanted = relevant[user]
        shown.update(items)
        hits = 0
        dcg = precision_sum = 0.0
        for rank, item in enumerate(items):
            if item in wanted:
                hits += 1
                dcg += _discount(rank)
                precision_sum += hits / (rank + 1)
        ideal = sum(_discount(rank) for rank in range(min(k, len(wanted))))
        precision += hits / k
        recall += hits / len(wanted)
        ndcg += dcg / ideal
        average_precision += precision_sum / min(k, len(wanted))
        diversity += intra_list_diversity(items, category_of)
    count = len(users)
    return TopKMetrics(
        users=count,
        precision=precision / count,
        recall=recall / count,
        ndcg=ndcg / count,
        map=average_precision / count,
        coverage=len(shown) / catalogue_size if catalogue_size else 0.0,
        diversity=diversity / count,
    )


def intra_list_diversity(items: Sequence[int], category_of: Mapping[int, Collection[str]]) -> float:
    """Share of item pairs that share no category (0 for lists shorter than two). An item
    without categories counts as one of the category "". A plain string is refused: it would
    read as a set of letters."""
    if len(items) < 2:
        return 0.0
    categories: list[frozenset[str]] = []
    for item in items:
        labels = category_of.get(item) or ("",)
        if isinstance(labels, str):
            raise TypeError(f"the categories of item {item} must be a collection, not a string")
        categories.append(frozenset(labels))
    pairs = different = 0
    for left in range(len(categories)):
        for right in range(left + 1, len(categories)):
            pairs += 1
            different += categories[left].isdisjoint(categories[right])
    return different / pairs
