"""Activity tiers of `recsys precompute` (seed Journey 2 and "Cost Optimization"): which users
get a pre-computed answer, and how long it lives (pure functions)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# The users no tier takes: not pre-computed, served live.
ON_DEMAND = "on_demand"


@dataclass(frozen=True, slots=True)
class ActivityTier:
    name: str
    # Cumulative: the tier ends at this share of the active users, by activity rank.
    top_share: float
    ttl_seconds: int


def assign_tiers(
    activity: Sequence[tuple[str, int]], tiers: Sequence[ActivityTier]
) -> Mapping[str, tuple[str, ...]]:
    """Users per tier, most active first. `activity` is (user, interactions) for every user
    active in the window; users are ranked by interactions (ties by user id), and a tier takes
    those ranked after the previous tier up to ceil(top_share x active users): the top 10% of
    one active user is that user. `tiers` go from most to least active (increasing shares);
    the rest is ON_DEMAND."""
    ranked = [user for user, _ in sorted(activity, key=lambda entry: (-entry[1], entry[0]))]
    total = len(ranked)
    assigned: dict[str, tuple[str, ...]] = {}
    start = 0
    for tier in tiers:
        # Rounded first: 0.3 x 10 is 3.0000000000000004 in floating point, and still 3 users.
        end = max(start, min(total, math.ceil(round(tier.top_share * total, 9))))
        assigned[tier.name] = tuple(ranked[start:end])
        start = end
    assigned[ON_DEMAND] = tuple(ranked[start:])
    return assigned
