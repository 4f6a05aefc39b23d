"""MetadataRepository: user profiles, item metadata, interactions, the audit log and the
tombstones of erased users (SQL)."""

from __future__ import annotations

import abc
import datetime as dt
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from recsys.domain.interactions import Interaction


@dataclass(frozen=True, slots=True)
class UserProfile:
    user_id: str
    age: int | None = None
    country: str | None = None
    blocked_categories: tuple[str, ...] = ()
    onboarding_categories: tuple[str, ...] = ()
    liked_item_ids: tuple[int, ...] = ()
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class ItemMetadata:
    """`category` is the item's primary category (one per item: the response's category, the
    ranking features); `categories` holds every category of the item, sorted by name, the
    primary one included. Built with `categories` left empty (or without the primary, or
    unsorted), they are normalised on construction: every item has at least its primary one."""

    item_id: int
    category: str
    adult: bool = False
    # ISO country codes; empty means available everywhere.
    available_regions: tuple[str, ...] = ()
    popularity: float = 0.0
    created_at: dt.datetime | None = None
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        categories = self.categories
        if not categories:
            object.__setattr__(self, "categories", (self.category,))
        elif (
            not isinstance(categories, tuple)
            or self.category not in categories
            or any(left >= right for left, right in itertools.pairwise(categories))
        ):
            object.__setattr__(self, "categories", tuple(sorted({self.category, *categories})))

    @property
    def all_categories(self) -> tuple[str, ...]:
        """Every category of the item (the privacy filter, diversity, category requests)."""
        return self.categories or (self.category,)


@dataclass(frozen=True, slots=True)
class ErasureResult:
    deleted_interactions: int
    profile_erased: bool
    details: Mapping[str, int] = field(default_factory=dict)


class MetadataRepository(abc.ABC):
    """Failures raise RecsysError (Unavailable when the database cannot be reached)."""

    @abc.abstractmethod
    async def get_user(self, user_id: str) -> UserProfile | None: ...

    @abc.abstractmethod
    async def upsert_users(self, profiles: Sequence[UserProfile]) -> None: ...

    @abc.abstractmethod
    async def get_items(self, item_ids: Sequence[int]) -> dict[int, ItemMetadata]: ...

    @abc.abstractmethod
    async def upsert_items(self, items: Sequence[ItemMetadata]) -> None: ...

    @abc.abstractmethod
    async def popular_items(self, *, category: str | None, limit: int) -> list[int]:
        """Item ids by descending popularity, optionally of one category."""

    @abc.abstractmethod
    async def record_interactions(self, interactions: Sequence[Interaction]) -> int:
        """Stores interactions; a repeated event_id is ignored. Returns how many were new."""

    @abc.abstractmethod
    async def consumed_item_ids(self, user_id: str, *, limit: int = 10_000) -> set[int]:
        """Items the user has interacted with (for excluding them from recommendations)."""

    @abc.abstractmethod
    async def user_activity(self, since: dt.datetime) -> list[tuple[str, int]]:
        """Users with their interaction counts since `since` (event time), most active first,
        ties by user id ascending; erased users are left out (`recsys precompute` ranks users
        into activity tiers by it)."""

    @abc.abstractmethod
    async def erase_user(self, user_id: str) -> ErasureResult:
        """Deletes the user's interactions, replaces the profile by a deleted marker and records
        a tombstone (the user's hash, never the id), all in one transaction."""

    @abc.abstractmethod
    async def erased_user_ids(self, user_ids: Iterable[str]) -> set[str]:
        """Those of `user_ids` that were erased (have a tombstone). Every loader (catalogue,
        feature snapshot, training) skips them, so that reloading data does not bring an
        erased user back."""

    @abc.abstractmethod
    async def write_audit(
        self, action: str, subject: str, details: Mapping[str, object]
    ) -> None: ...

    @abc.abstractmethod
    async def count_rows_for_user(self, user_id: str) -> dict[str, int]:
        """Rows that still hold the user's data, per table (erasure verification)."""

    async def catalogue_version(self) -> int:
        """A counter that changes with every write to the item catalogue (`upsert_items`), for
        caches of item metadata to notice writes made by other processes. A store without one
        answers 0 always: its caches then rely on their TTL alone."""
        return 0

    async def ping(self) -> None:
        """A cheap read that raises when the store cannot answer (the health probe)."""
        await self.popular_items(category=None, limit=1)

    async def close(self) -> None:
        return None
