"""Embedding migration (seed Simulation 6): when a release changes the embedding version, the
users' embeddings of the new version are backfilled from the new feature snapshot into the
feature store, at a bounded rate so the store keeps serving meanwhile.

Until a user is migrated, Recommend answers them from popularity, flagged
`popularity_candidates` (their embedding is of another version than the index), never an error.

The job is resumable by construction: a user whose stored embedding already has the target
version is skipped, so it can be killed and started again at any time. Erased users (their
tombstones in the metadata store) are never written, and a user erased while their batch was
being written is deleted again.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from recsys.data.features_file import FeatureSnapshot
from recsys.ports.features import FeatureStore, UserEmbedding
from recsys.ports.metadata import MetadataRepository
from recsys.settings import MigrationSettings

T = TypeVar("T")


class Outcome(enum.Enum):
    MIGRATED = "migrated"
    SKIPPED = "skipped"
    ERASED = "erased"


class TokenBucket:
    """Lets `rate` units per second through, in takes of at most `capacity`. It starts empty,
    so a (re)started job never begins with a burst."""

    def __init__(
        self,
        rate: float,
        capacity: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("a token bucket needs a positive rate and capacity")
        self.rate = rate
        self.capacity = capacity
        self.clock = clock
        self.sleep = sleep
        self.tokens = 0.0
        self.updated = clock()

    async def take(self, count: int) -> None:
        if count > self.capacity:
            raise ValueError(f"cannot take {count} at once from a bucket of {self.capacity}")
        while True:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= count:
                self.tokens -= count
                return
            await self.sleep((count - self.tokens) / self.rate)


@dataclass
class MigrationProgress:
    """Where a run stands; `looked_at` users of the snapshot (in its order) were migrated,
    skipped or left out as erased."""

    embedding_version: str
    total: int
    migrated: int = 0
    # Already holding the target version (migrated by an earlier run, or loaded otherwise).
    skipped: int = 0
    erased: int = 0
    looked_at: int = 0
    # Stopped by the run's limit before the end of the snapshot.
    stopped_at_limit: bool = False
    started: float = field(default_factory=time.monotonic)

    def count_through(self, decided: Sequence[tuple[int, Outcome]], counted: int, row: int) -> int:
        """Counts `decided[counted:]` up to `row` (included); returns how many are counted."""
        while counted < len(decided) and decided[counted][0] <= row:
            outcome = decided[counted][1]
            if outcome is Outcome.MIGRATED:
                self.migrated += 1
            elif outcome is Outcome.SKIPPED:
                self.skipped += 1
            else:
                self.erased += 1
            counted += 1
        self.looked_at = row + 1
        return counted

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """Users written per second so far."""
        seconds = self.seconds
        return self.migrated / seconds if seconds > 0 else 0.0

    @property
    def finished(self) -> bool:
        return self.looked_at >= self.total

    def describe(self) -> str:
        share = self.looked_at / self.total if self.total else 1.0
        return (
            f"{self.looked_at}/{self.total} users ({share:.0%}): {self.migrated} migrated, "
            f"{self.skipped} skipped (already {self.embedding_version}), {self.erased} erased; "
            f"{self.rate:.0f} users/s"
        )


async def migrate_user_embeddings(
    snapshot: FeatureSnapshot,
    store: FeatureStore,
    *,
    metadata: MetadataRepository | None,
    settings: MigrationSettings,
    limit: int | None = None,
    on_progress: Callable[[MigrationProgress], None] | None = None,
    bucket: TokenBucket | None = None,
) -> MigrationProgress:
    """Writes the snapshot's user embeddings of users not yet at its version, at most
    `settings.rate_per_second` per second and at most `limit` this run, and the default user
    embedding of the version (served when a user's features cannot be read).

    With `metadata`, users erased there are left out. Store errors propagate: a rerun resumes
    where this one stopped."""
    target = snapshot.embedding_version
    progress = MigrationProgress(target, len(snapshot.user_ids))
    await store.put_default_user_embedding(
        UserEmbedding(snapshot.default_user_vector, target, snapshot.generated_at)
    )
    # A write of at most one second's worth of users at once, so a low rate stays smooth.
    step = max(1, min(settings.batch_size, int(settings.rate_per_second)))
    bucket = bucket or TokenBucket(settings.rate_per_second, step)
    in_flight = asyncio.Semaphore(settings.concurrency)

    async def bounded(call: Awaitable[T]) -> T:
        async with in_flight:
            return await call

    async def all_of(calls: Sequence[Awaitable[T]]) -> list[T]:
        return list(await asyncio.gather(*(bounded(call) for call in calls)))

    for start in range(0, len(snapshot.user_ids), settings.batch_size):
        stop = min(start + settings.batch_size, len(snapshot.user_ids))
        users = snapshot.user_ids[start:stop]
        erased = await metadata.erased_user_ids(users) if metadata is not None else set()
        kept = [row for row in range(start, stop) if snapshot.user_ids[row] not in erased]
        # The port reads one user at a time: the batch's reads go out together.
        stored = await all_of([store.get_user_embedding(snapshot.user_ids[row]) for row in kept])
        versions = {
            row: embedding.embedding_version if embedding is not None else None
            for row, embedding in zip(kept, stored, strict=True)
        }
        # In snapshot order; a row is counted once it and every row before it are done.
        decided: list[tuple[int, Outcome]] = []
        planned = progress.migrated
        for row in range(start, stop):
            if row not in versions:
                decided.append((row, Outcome.ERASED))
            elif versions[row] == target:
                decided.append((row, Outcome.SKIPPED))
            elif limit is not None and planned >= limit:
                progress.stopped_at_limit = True
                break
            else:
                decided.append((row, Outcome.MIGRATED))
                planned += 1
        pending = [row for row, outcome in decided if outcome is Outcome.MIGRATED]
        counted = 0
        for first in range(0, len(pending), step):
            chunk = pending[first : first + step]
            await bucket.take(len(chunk))
            await all_of(
                [
                    store.put_user_embedding(snapshot.user_ids[row], snapshot.user_embedding(row))
                    for row in chunk
                ]
            )
            counted = progress.count_through(decided, counted, chunk[-1])
            if on_progress is not None:
                on_progress(progress)
        if decided:
            progress.count_through(decided, counted, decided[-1][0])
        if metadata is not None and pending:
            # Erased while this batch was written: take the embedding out again.
            written = [snapshot.user_ids[row] for row in pending]
            late = await metadata.erased_user_ids(written)
            await all_of([store.delete_user(user) for user in late])
            progress.migrated -= len(late)
            progress.erased += len(late)
        if on_progress is not None:
            on_progress(progress)
        if progress.stopped_at_limit:
            break
    return progress
