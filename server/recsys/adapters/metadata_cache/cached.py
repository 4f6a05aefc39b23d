"""A MetadataRepository that keeps item metadata in process: the per-request SQL read of the
Recommend path (the items of a ranked pool, a pre-computed entry's prefix) becomes a
dictionary lookup once an item has been read.

Bounded by item count (least recently used out first). Invalidation: every item write bumps
the catalogue version in the same transaction (`SqlMetadataRepository.upsert_items`); a
background task reads it every `version_poll_seconds` and drops every cached item when it
changed, so a write of another process (`recsys data load`) is served at most that long after
it committed. Writes through this process drop the written items at once. An entry older than
`ttl_seconds` is read again whatever the poll saw (the bound while the store cannot be read).

Only item metadata is cached: profiles and histories change with every interaction and erasure
and are read from the store on each request, so an erased user is never served from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence

from recsys.domain.interactions import Interaction
from recsys.errors import RecsysError
from recsys.ports.metadata import ErasureResult, ItemMetadata, MetadataRepository, UserProfile
from recsys.settings import MetadataCacheSettings

logger = logging.getLogger(__name__)


class CachedMetadataRepository(MetadataRepository):
    def __init__(
        self,
        inner: MetadataRepository,
        settings: MetadataCacheSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.max_items = settings.max_items
        self.ttl_seconds = settings.ttl_seconds
        self.poll_seconds = settings.version_poll_seconds
        self.clock = clock
        # item id -> (metadata, when it was read); oldest use first.
        self.entries: OrderedDict[int, tuple[ItemMetadata, float]] = OrderedDict()
        # The catalogue version the entries were read under; None until first read (nothing
        # is kept before: an entry read before the first version is known could be stale).
        self.version: int | None = None
        # Bumped whenever entries are dropped: a read that began before must not store its
        # rows afterwards (they may predate the write that caused the drop).
        self.generation = 0
        self.hits = 0
        self.misses = 0
        self._poller: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ item metadata

    async def get_items(self, item_ids: Sequence[int]) -> dict[int, ItemMetadata]:
        if not item_ids:
            return {}
        if self.version is None:
            await self._first_version()
        self._ensure_poller()
        now = self.clock()
        found: dict[int, ItemMetadata] = {}
        missing: list[int] = []
        entries = self.entries
        oldest = now - self.ttl_seconds
        for item_id in item_ids:
            entry = entries.get(item_id)
            if entry is not None and entry[1] >= oldest:
                entries.move_to_end(item_id)
                found[item_id] = entry[0]
            else:
                missing.append(item_id)
        self.hits += len(found)
        if not missing:
            return found
        self.misses += len(missing)
        generation = self.generation
        read = await self.inner.get_items(missing)
        found.update(read)
        if generation == self.generation and self.version is not None:
            self._store(read, now)
        return found

    def _store(self, read: Mapping[int, ItemMetadata], now: float) -> None:
        entries = self.entries
        for item_id, metadata in read.items():
            entries[item_id] = (metadata, now)
            entries.move_to_end(item_id)
        while len(entries) > self.max_items:
            entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()
        self.generation += 1

    async def upsert_items(self, items: Sequence[ItemMetadata]) -> None:
        try:
            await self.inner.upsert_items(items)
        finally:
            # Whatever the outcome (a write may commit and still fail to answer).
            self.generation += 1
            for item in items:
                self.entries.pop(item.item_id, None)

    # ------------------------------------------------------------------ the version poll

    async def refresh_version(self) -> None:
        """Reads the catalogue version; a change drops every cached item. Raises RecsysError
        when the store cannot be read (entries then age out by their TTL)."""
        version = await self.inner.catalogue_version()
        if version != self.version:
            if self.version is not None:
                logger.info(
                    "catalogue changed; item metadata cache dropped",
                    extra={"items": len(self.entries), "catalogue_version": version},
                )
            self.clear()
            self.version = version

    async def _first_version(self) -> None:
        with contextlib.suppress(RecsysError):
            await self.refresh_version()

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.refresh_version()
            except RecsysError as error:
                logger.warning(
                    "catalogue version not readable; cached item metadata ages out by its TTL",
                    extra={"error": error.message},
                )

    async def stop_polling(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    async def close(self) -> None:
        await self.stop_polling()
        await self.inner.close()

    # ------------------------------------------------------------------ read through

    async def catalogue_version(self) -> int:
        return await self.inner.catalogue_version()

    async def get_user(self, user_id: str) -> UserProfile | None:
        return await self.inner.get_user(user_id)

    async def upsert_users(self, profiles: Sequence[UserProfile]) -> None:
        await self.inner.upsert_users(profiles)

    async def popular_items(self, *, category: str | None, limit: int) -> list[int]:
        return await self.inner.popular_items(category=category, limit=limit)

    async def record_interactions(self, interactions: Sequence[Interaction]) -> int:
        return await self.inner.record_interactions(interactions)

    async def consumed_item_ids(self, user_id: str, *, limit: int = 10_000) -> set[int]:
        return await self.inner.consumed_item_ids(user_id, limit=limit)

    async def user_activity(self, since: dt.datetime) -> list[tuple[str, int]]:
        return await self.inner.user_activity(since)

    async def erase_user(self, user_id: str) -> ErasureResult:
        return await self.inner.erase_user(user_id)

    async def erased_user_ids(self, user_ids: Iterable[str]) -> set[str]:
        return await self.inner.erased_user_ids(user_ids)

    async def write_audit(self, action: str, subject: str, details: Mapping[str, object]) -> None:
        await self.inner.write_audit(action, subject, details)

    async def count_rows_for_user(self, user_id: str) -> dict[str, int]:
        return await self.inner.count_rows_for_user(user_id)

    async def ping(self) -> None:
        await self.inner.ping()
