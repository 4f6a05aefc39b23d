"""MetadataRepository on SQL: PostgreSQL in distributed mode, SQLite embedded."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn

from sqlalchemy import delete, desc, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

from recsys.domain.erasure import hashed_subject
from recsys.domain.interactions import Interaction
from recsys.errors import DeadlineExceeded, Unavailable
from recsys.metadata.database import create_engine, describe_error
from recsys.metadata.tables import (
    audit_log,
    catalogue_version,
    erased_users,
    interactions,
    item_categories,
    items,
    users,
)
from recsys.observability.metrics import PoolStatus
from recsys.ports.metadata import ErasureResult, ItemMetadata, MetadataRepository, UserProfile
from recsys.settings import RecsysSettings

logger = logging.getLogger(__name__)

# The `catalogue_version` row bumped by every item write.
ITEMS_VERSION = "items"


class SqlMetadataRepository(MetadataRepository):
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        # For the pool metrics: connections handed out, and the time spent waiting for them.
        self._checkouts = 0
        self._wait_seconds = 0.0
        # Calls whose callers gave up, still cancelling their queries (see `_run`).
        self._abandoned: set[asyncio.Task[Any]] = set()

    def pool_status(self) -> PoolStatus:
        pool = self.engine.pool
        size = getattr(pool, "size", lambda: 0)() + max(0, getattr(pool, "_max_overflow", 0))
        in_use = getattr(pool, "checkedout", lambda: 0)()
        return PoolStatus(size, in_use, self._checkouts, self._wait_seconds)

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> SqlMetadataRepository:
        return cls(create_engine(settings.database))

    async def _run(self, work: Any, *, write: bool = False) -> Any:
        """`work` on a connection, in a task of its own: a caller that gives up (its budget
        ran out) is cancelled at once, and the task cancels the query in the background.
        Awaited in the caller, psycopg's cancellation of a query waits for the server, up to
        10 s when the server hangs (a frozen or unreachable primary): past any deadline."""
        task = asyncio.get_running_loop().create_task(self._attempts(work, write=write))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()
            self._abandoned.add(task)
            task.add_done_callback(_forget(self._abandoned))
            raise

    async def _attempts(self, work: Any, *, write: bool) -> Any:
        try:
            return await self._attempt(work, write=write)
        except DBAPIError as error:
            if write or not error.connection_invalidated:
                _raise_translated(error)
            # A read on a connection the server dropped (a restart, terminated backends):
            # once more on a fresh one; the pool discarded the dead connection.
            logger.warning("database connection lost; reading again on a new one")
        try:
            return await self._attempt(work, write=False)
        except DBAPIError as error:
            _raise_translated(error)

    async def _attempt(self, work: Any, *, write: bool) -> Any:
        try:
            started = time.perf_counter()
            if write:
                async with self.engine.begin() as connection:
                    self._checked_out(started)
                    return await work(connection)
            async with self.engine.connect() as connection:
                self._checked_out(started)
                return await work(connection)
        except PoolTimeout as error:
            raise DeadlineExceeded("no database connection became free in time") from error
        except OSError as error:
            raise Unavailable(
                f"database unavailable: {describe_error(error)}", reason="DATABASE_DOWN"
            ) from error

    def _checked_out(self, started: float) -> None:
        self._checkouts += 1
        self._wait_seconds += time.perf_counter() - started

    async def get_user(self, user_id: str) -> UserProfile | None:
        async def work(connection: Any) -> UserProfile | None:
            row = (
                await connection.execute(select(users).where(users.c.user_id == user_id))
            ).first()
            if row is None:
                return None
            return UserProfile(
                user_id=row.user_id,
                age=row.age,
                country=row.country,
                blocked_categories=tuple(row.blocked_categories or ()),
                onboarding_categories=tuple(row.onboarding_categories or ()),
                liked_item_ids=tuple(int(item) for item in row.liked_item_ids or ()),
                deleted=row.deleted_at is not None,
            )

        result: UserProfile | None = await self._run(work)
        return result

    async def upsert_users(self, profiles: Sequence[UserProfile]) -> None:
        if not profiles:
            return
        rows = [
            {
                "user_id": profile.user_id,
                "age": profile.age,
                "country": profile.country,
                "blocked_categories": list(profile.blocked_categories),
                "onboarding_categories": list(profile.onboarding_categories),
                "liked_item_ids": list(profile.liked_item_ids),
                "deleted_at": None,
            }
            for profile in profiles
        ]
        statement = self._insert(users).values(rows)
        statement = statement.on_conflict_do_update(
            index_elements=[users.c.user_id],
            set_={
                name: statement.excluded[name]
                for name in (
                    "age",
                    "country",
                    "blocked_categories",
                    "onboarding_categories",
                    "liked_item_ids",
                    "deleted_at",
                )
            },
        )

        async def work(connection: Any) -> None:
            await connection.execute(statement)

        await self._run(work, write=True)

    async def get_items(self, item_ids: Sequence[int]) -> dict[int, ItemMetadata]:
        if not item_ids:
            return {}

        async def work(connection: Any) -> dict[int, ItemMetadata]:
            found: dict[int, ItemMetadata] = {}
            unique = sorted(set(int(item) for item in item_ids))
            for start in range(0, len(unique), 5000):
                chunk = unique[start : start + 5000]
                labels: dict[int, list[str]] = {}
                for label in await connection.execute(
                    select(item_categories.c.item_id, item_categories.c.category).where(
                        item_categories.c.item_id.in_(chunk)
                    )
                ):
                    labels.setdefault(label.item_id, []).append(label.category)
                rows = await connection.execute(select(items).where(items.c.item_id.in_(chunk)))
                for row in rows:
                    found[row.item_id] = _item(row, labels.get(row.item_id, ()))
            return found

        result: dict[int, ItemMetadata] = await self._run(work)
        return result

    async def upsert_items(self, metadata: Sequence[ItemMetadata]) -> None:
        if not metadata:
            return
        now = dt.datetime.now(dt.UTC)
        rows = [
            {
                "item_id": item.item_id,
                "category": item.category,
                "adult": item.adult,
                "available_regions": list(item.available_regions),
                "popularity": item.popularity,
                # Every row names the same columns (one multi-row INSERT).
                "created_at": item.created_at or now,
            }
            for item in metadata
        ]
        # An item's categories are replaced as a whole: its old rows out, its current ones in.
        latest = {item.item_id: item for item in metadata}
        labels = [
            {"item_id": item_id, "category": category}
            for item_id, item in latest.items()
            for category in item.all_categories
        ]
        item_ids = sorted(latest)

        async def work(connection: Any) -> None:
            for start in range(0, len(rows), 2000):
                statement = self._insert(items).values(rows[start : start + 2000])
                statement = statement.on_conflict_do_update(
                    index_elements=[items.c.item_id],
                    set_={
                        name: statement.excluded[name]
                        for name in ("category", "adult", "available_regions", "popularity")
                    },
                )
                await connection.execute(statement)
            for start in range(0, len(item_ids), 5000):
                await connection.execute(
                    delete(item_categories).where(
                        item_categories.c.item_id.in_(item_ids[start : start + 5000])
                    )
                )
            if labels:
                await connection.execute(item_categories.insert(), labels)
            # In the same transaction: a cache that sees the new version sees the new rows.
            await connection.execute(
                update(catalogue_version)
                .where(catalogue_version.c.name == ITEMS_VERSION)
                .values(version=catalogue_version.c.version + 1)
            )

        await self._run(work, write=True)

    async def catalogue_version(self) -> int:
        async def work(connection: Any) -> int:
            row = (
                await connection.execute(
                    select(catalogue_version.c.version).where(
                        catalogue_version.c.name == ITEMS_VERSION
                    )
                )
            ).first()
            return int(row.version) if row is not None else 0

        result: int = await self._run(work)
        return result

    async def ping(self) -> None:
        async def work(connection: Any) -> None:
            await connection.execute(select(1))

        await self._run(work)

    async def popular_items(self, *, category: str | None, limit: int) -> list[int]:
        query = select(items.c.item_id).order_by(desc(items.c.popularity), items.c.item_id)
        if category is not None:
            # A semi-join on (category, item_id): items having the category among any of theirs.
            # The planner may also walk the popularity index and probe the primary key of
            # item_categories, which stops at `limit` for a large category.
            query = query.where(
                items.c.item_id.in_(
                    select(item_categories.c.item_id).where(item_categories.c.category == category)
                )
            )

        async def work(connection: Any) -> list[int]:
            return [row.item_id for row in await connection.execute(query.limit(limit))]

        result: list[int] = await self._run(work)
        return result

    async def record_interactions(self, events: Sequence[Interaction]) -> int:
        if not events:
            return 0
        rows = [
            {
                "event_id": event.event_id,
                "user_id": event.user_id,
                "item_id": event.item_id,
                "kind": event.kind.value if event.kind else "unknown",
                "value": event.value,
                "event_time": event.event_time or dt.datetime.now(dt.UTC),
                "surface": event.surface,
            }
            for event in events
        ]
        statement = self._insert(interactions).on_conflict_do_nothing(
            index_elements=[interactions.c.event_id]
        )
        sqlite_dialect = self.engine.dialect.name == "sqlite"

        async def work(connection: Any) -> int:
            if sqlite_dialect:
                # executemany: SQLite reports the rows it changed, ignored conflicts excluded.
                return int((await connection.execute(statement, rows)).rowcount)
            # PostgreSQL: RETURNING lists only the rows actually inserted (a batched insert's
            # rowcount is -1).
            # "insertmanyvalues": batched VALUES with one compiled statement (a 500-row
            # `.values(rows)` compiled 4,000 parameters on every call).
            returning = statement.returning(interactions.c.event_id)
            return len((await connection.execute(returning, rows)).fetchall())

        result: int = await self._run(work, write=True)
        return result

    async def consumed_item_ids(self, user_id: str, *, limit: int = 10_000) -> set[int]:
        query = (
            select(interactions.c.item_id)
            .where(interactions.c.user_id == user_id)
            .order_by(desc(interactions.c.event_time))
            .limit(limit)
        )

        async def work(connection: Any) -> set[int]:
            return {row.item_id for row in await connection.execute(query)}

        result: set[int] = await self._run(work)
        return result

    async def user_activity(self, since: dt.datetime) -> list[tuple[str, int]]:
        count = func.count().label("event_count")
        # Deleted markers are left out here; tombstones (hashed ids, no profile needed) below.
        query = (
            select(interactions.c.user_id, count)
            .select_from(interactions.outerjoin(users, users.c.user_id == interactions.c.user_id))
            .where(interactions.c.event_time >= since.astimezone(dt.UTC))
            .where(users.c.deleted_at.is_(None))
            .group_by(interactions.c.user_id)
            .order_by(desc(count), interactions.c.user_id)
        )

        async def work(connection: Any) -> list[tuple[str, int]]:
            return [(row.user_id, int(row.event_count)) for row in await connection.execute(query)]

        activity: list[tuple[str, int]] = await self._run(work)
        erased = await self.erased_user_ids(user for user, _ in activity)
        return [entry for entry in activity if entry[0] not in erased]

    async def erase_user(self, user_id: str) -> ErasureResult:
        async def work(connection: Any) -> ErasureResult:
            removed = await connection.execute(
                delete(interactions).where(interactions.c.user_id == user_id)
            )
            erased = await connection.execute(
                update(users)
                .where(users.c.user_id == user_id, users.c.deleted_at.is_(None))
                .values(
                    age=None,
                    country=None,
                    blocked_categories=[],
                    onboarding_categories=[],
                    liked_item_ids=[],
                    deleted_at=dt.datetime.now(dt.UTC),
                )
            )
            await connection.execute(
                self._insert(erased_users)
                .values(subject=hashed_subject(user_id))
                .on_conflict_do_nothing(index_elements=[erased_users.c.subject])
            )
            return ErasureResult(
                deleted_interactions=int(removed.rowcount or 0),
                profile_erased=bool(erased.rowcount),
            )

        result: ErasureResult = await self._run(work, write=True)
        return result

    async def erased_user_ids(self, user_ids: Iterable[str]) -> set[str]:
        by_subject: dict[str, list[str]] = {}
        for user_id in user_ids:
            by_subject.setdefault(hashed_subject(user_id), []).append(user_id)
        if not by_subject:
            return set()
        subjects = sorted(by_subject)

        async def work(connection: Any) -> set[str]:
            erased: set[str] = set()
            for start in range(0, len(subjects), 5000):
                chunk = subjects[start : start + 5000]
                rows = await connection.execute(
                    select(erased_users.c.subject).where(erased_users.c.subject.in_(chunk))
                )
                for row in rows:
                    erased.update(by_subject[row.subject])
            return erased

        result: set[str] = await self._run(work)
        return result

    async def write_audit(self, action: str, subject: str, details: Mapping[str, object]) -> None:
        async def work(connection: Any) -> None:
            await connection.execute(
                audit_log.insert().values(action=action, subject=subject, details=dict(details))
            )

        await self._run(work, write=True)

    async def count_rows_for_user(self, user_id: str) -> dict[str, int]:
        async def work(connection: Any) -> dict[str, int]:
            counted = {}
            counted["interactions"] = (
                await connection.execute(
                    select(func.count()).where(interactions.c.user_id == user_id)
                )
            ).scalar_one()
            counted["profile_data"] = (
                await connection.execute(
                    select(func.count()).where(
                        users.c.user_id == user_id, users.c.deleted_at.is_(None)
                    )
                )
            ).scalar_one()
            counted["audit_with_plain_id"] = (
                await connection.execute(select(func.count()).where(audit_log.c.subject == user_id))
            ).scalar_one()
            return counted

        result: dict[str, int] = await self._run(work)
        return result

    async def close(self) -> None:
        if self._abandoned:
            # Their cancellations, briefly: a hung server is not waited for.
            await asyncio.wait(set(self._abandoned), timeout=1.0)
        await self.engine.dispose()


def _item(row: Any, categories: Iterable[str]) -> ItemMetadata:
    return ItemMetadata(
        item_id=row.item_id,
        category=row.category,
        adult=bool(row.adult),
        available_regions=tuple(row.available_regions or ()),
        popularity=float(row.popularity),
        created_at=row.created_at,
        categories=tuple(sorted(categories)),
    )


def _forget(abandoned: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    """Drops a finished abandoned call, its outcome read (nobody awaits it any more)."""

    def done(task: asyncio.Task[Any]) -> None:
        abandoned.discard(task)
        if not task.cancelled():
            task.exception()

    return done


def _raise_translated(error: DBAPIError) -> NoReturn:
    """A database that cannot be reached or dropped the connection: Unavailable (callers
    degrade); anything else is a bug and propagates as it is."""
    if isinstance(error, OperationalError):
        raise Unavailable(
            f"database unavailable: {describe_error(error)}", reason="DATABASE_DOWN"
        ) from error
    if error.connection_invalidated:
        raise Unavailable("database connection lost", reason="DATABASE_DOWN") from error
    raise error
