"""Activity tiers of `recsys precompute`: who is pre-computed, in which tier (pure)."""

from __future__ import annotations

import pytest

from recsys.domain.recommend.tiers import ON_DEMAND, ActivityTier, assign_tiers
from recsys.settings import PrecomputeSettings

SEED = (
    ActivityTier("hourly", 0.10, 3_600),
    ActivityTier("daily", 0.30, 86_400),
    ActivityTier("weekly", 0.60, 604_800),
)


def test_tiers_take_cumulative_shares_of_the_active_users_by_rank() -> None:
    # user00 is the most active (20 interactions), user19 the least (1).
    activity = [(f"user{index:02d}", 20 - index) for index in range(20)]
    assigned = assign_tiers(list(reversed(activity)), SEED)
    assert assigned["hourly"] == ("user00", "user01")
    assert assigned["daily"] == tuple(f"user{index:02d}" for index in range(2, 6))
    assert assigned["weekly"] == tuple(f"user{index:02d}" for index in range(6, 12))
    assert assigned[ON_DEMAND] == tuple(f"user{index:02d}" for index in range(12, 20))


def test_shares_round_up_and_ties_go_by_user_id() -> None:
    # 0.3 x 10 is 3 users, not 4 (floating point); 0.1 x 3 rounds up to one user.
    ten = [(f"u{index}", 5) for index in range(10)]
    assert [len(users) for users in assign_tiers(ten, SEED).values()] == [1, 2, 3, 4]
    # Of three: up to 1 (0.3), up to 1 (0.9, nothing left for daily), up to 2 (1.8).
    assert assign_tiers([("b", 2), ("c", 2), ("a", 1)], SEED) == {
        "hourly": ("b",),
        "daily": (),
        "weekly": ("c",),
        ON_DEMAND: ("a",),
    }
    assert assign_tiers([("solo", 1)], SEED)["hourly"] == ("solo",)


def test_no_activity_and_no_tiers() -> None:
    assert assign_tiers([], SEED) == {"hourly": (), "daily": (), "weekly": (), ON_DEMAND: ()}
    assert assign_tiers([("a", 1)], ()) == {ON_DEMAND: ("a",)}
    everyone = assign_tiers([("a", 3), ("b", 1)], (ActivityTier("all", 1.0, 60),))
    assert everyone == {"all": ("a", "b"), ON_DEMAND: ()}


def test_the_default_settings_are_the_seeds_tiers() -> None:
    settings = PrecomputeSettings()
    assert [(tier.name, tier.top_share, tier.ttl_seconds) for tier in settings.tiers] == [
        ("hourly", 0.10, 3_600),
        ("daily", 0.30, 86_400),
        ("weekly", 0.60, 604_800),
    ]
    assert (settings.concurrency, settings.surfaces) == (8, ("homepage",))


@pytest.mark.parametrize(
    ("tiers", "message"),
    [
        ([("a", 0.1), ("a", 0.2)], "unique"),
        ([("a", 0.3), ("b", 0.2)], "must increase"),
        ([("a", 0.3), ("b", 0.3)], "must increase"),
        ([("on_demand", 0.3)], "not configured"),
        ([("a", 0.0)], "greater than 0"),
        ([("a", 1.5)], "less than or equal to 1"),
    ],
)
def test_invalid_tiers_are_refused(tiers: list[tuple[str, float]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrecomputeSettings.model_validate(
            {"tiers": [{"name": n, "top_share": s, "ttl_seconds": 60} for n, s in tiers]}
        )
