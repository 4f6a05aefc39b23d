"""The warm-up of a shared feature store (seed: "Cache Warm-up: on failover, restore from latest
snapshot"). A Redis restarted without persistence has lost every user embedding and item
feature; until the snapshot is loaded again every user is served as a cold-start one.

With `features.restore_path` set, every process holding the store runs a `FeatureWarmup`: at
startup and every `features.restore_check_seconds` it reads the store's load marker. When
there is none, it takes the load lock, reads the snapshot in a thread, writes it in batches
(`load_into_store`, erased users left out) while serving goes on, and marks the store loaded.
Of several processes (replicas of `recsys up`, pods) one loads: the others find the lock
taken, then the marker. A store that cannot be reached (down, frozen) is logged once per
outage and asked again at the next check; nothing here raises into the process.

`recsys data features` loads under the same lock and writes the same marker
(`load_exclusively`), so a store loaded by hand is not loaded again by the warm-up."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from recsys.data.features_file import FeatureSnapshot, load_features, load_into_store
from recsys.errors import RecsysError, Unavailable
from recsys.ports.features import FeatureStore
from recsys.ports.metadata import MetadataRepository

logger = logging.getLogger(__name__)

# How long the lock outlives a holder that died mid-load; renewed every third of it meanwhile.
LOCK_SECONDS = 30.0
# Rows per write batch of a restore: it shares the event loop with serving, and each batch's
# writes are built without yielding (2,000 rows stalled the loop for 100-200 ms on 2 cores,
# 100 rows for about 10 ms at the 99th percentile, in the same total time).
RESTORE_BATCH = 100


class LoadMarker(Protocol):
    """Where a shared store records that it holds a snapshot, and the lock for loading one."""

    async def loaded(self) -> Mapping[str, str] | None:
        """The record of the last completed load; None when the store holds no snapshot."""
        ...

    async def try_lock(self, holder: str, ttl_seconds: float) -> bool: ...

    async def extend_lock(self, holder: str, ttl_seconds: float) -> bool: ...

    async def unlock(self, holder: str) -> None: ...

    async def mark_loaded(self, holder: str, record: Mapping[str, str]) -> bool:
        """Records a completed load, only while `holder` holds the lock (False otherwise: it
        expired, or the store restarted during the load)."""
        ...


class CheckOutcome(enum.Enum):
    LOADED = "loaded"  # the store holds a snapshot
    RESTORED = "restored"  # this check loaded it
    BUSY = "busy"  # another process is loading it
    UNREACHABLE = "unreachable"  # the store did not answer the check
    FAILED = "failed"  # the load failed; the next check tries again


def holder_id() -> str:
    """A lock holder's name: host, process id and a random part (unique per warm-up)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def load_record(
    path: Path, *, source: str, snapshot: FeatureSnapshot | None = None, users: int | None = None
) -> dict[str, str]:
    """The marker's fields: what was loaded, when and by what; `load_id` tells loads apart."""
    record = {
        "load_id": uuid.uuid4().hex,
        "path": str(path),
        "source": source,
        "loaded_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    if snapshot is not None:
        record["embedding_version"] = snapshot.embedding_version
        record["generated_at"] = snapshot.generated_at.isoformat()
        record["items"] = str(len(snapshot.item_ids))
    if users is not None:
        record["users"] = str(users)
    return record


@contextlib.asynccontextmanager
async def exclusive_load(
    marker: LoadMarker,
    holder: str,
    *,
    wait_seconds: float = 0.0,
    lock_seconds: float = LOCK_SECONDS,
) -> AsyncIterator[bool]:
    """Holds the load lock for the block (True), renewing it in the background; False when
    another holder kept it for `wait_seconds`. RecsysError when the store does not answer."""
    deadline = time.monotonic() + wait_seconds
    while not await marker.try_lock(holder, lock_seconds):
        if time.monotonic() >= deadline:
            yield False
            return
        await asyncio.sleep(min(0.5, lock_seconds / 3))
    renewal = asyncio.create_task(_renew(marker, holder, lock_seconds))
    try:
        yield True
    finally:
        renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewal
        # A store that does not answer now lets the lock expire instead.
        with contextlib.suppress(RecsysError):
            await marker.unlock(holder)


async def _renew(marker: LoadMarker, holder: str, lock_seconds: float) -> None:
    while True:
        await asyncio.sleep(lock_seconds / 3)
        try:
            if not await marker.extend_lock(holder, lock_seconds):
                # The mark at the end will be refused: the load counts as failed.
                logger.warning("feature snapshot load lost its lock", extra={"holder": holder})
                return
        except RecsysError as error:
            logger.warning(
                "feature snapshot load lock not renewed",
                extra={"holder": holder, "error": error.message},
            )


async def load_exclusively(
    marker: LoadMarker,
    path: Path,
    load: Callable[[], Awaitable[None]],
    *,
    source: str,
    wait_seconds: float,
) -> None:
    """Runs `load` (a load of the snapshot at `path`) under the load lock, waiting up to
    `wait_seconds` for a load in progress, then marks the store loaded. Unavailable when the
    lock stays taken or is lost (the store restarted during the load: load again)."""
    holder = holder_id()
    async with exclusive_load(marker, holder, wait_seconds=wait_seconds) as held:
        if not held:
            raise Unavailable(
                f"another process has been loading the feature store for over {wait_seconds:.0f} "
                "s; try again once it is done",
                reason="FEATURE_LOAD_IN_PROGRESS",
            )
        await load()
        if not await marker.mark_loaded(holder, load_record(path, source=source)):
            raise Unavailable(
                "the feature store lost the load's lock (restarted during the load?): load the "
                "snapshot again",
                reason="FEATURE_LOAD_INTERRUPTED",
            )


class FeatureRestoreMetrics:
    """The warm-up's metrics (one set per process; a restore is done by one of them)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.restores = Counter(
            "recsys_feature_restores",
            "Restores of the feature snapshot into the shared store by this process, by outcome "
            "(restored, failed).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("restored", "failed"):
            self.restores.labels(outcome)
        self.last_restore = Gauge(
            "recsys_feature_restore_last_timestamp_seconds",
            "When this process last restored the feature snapshot (Unix time; 0: never).",
            registry=registry,
        )
        self.last_duration = Gauge(
            "recsys_feature_restore_last_duration_seconds",
            "How long this process's last restore of the feature snapshot took.",
            registry=registry,
        )
        self.loaded = Gauge(
            "recsys_feature_snapshot_loaded",
            "1 when the last check found the shared feature store loaded from a snapshot, 0 when "
            "it found none (a restore is due).",
            registry=registry,
        )


class FeatureWarmup:
    def __init__(
        self,
        path: Path,
        *,
        marker: LoadMarker,
        store: FeatureStore,
        tombstones: Callable[[], AbstractAsyncContextManager[MetadataRepository | None]],
        check_seconds: float,
        metrics: FeatureRestoreMetrics | None = None,
        on_loaded: Callable[[], Awaitable[None]] | None = None,
        lock_seconds: float = LOCK_SECONDS,
    ) -> None:
        self.path = path
        self.marker = marker
        # The store the snapshot is written to (a client of its own, `bulk_feature_store`).
        self.store = store
        # The metadata store with erased users' tombstones (None: nobody was ever erased).
        self.tombstones = tombstones
        self.check_seconds = check_seconds
        self.metrics = metrics
        # Run once per load seen, whoever did it (Recommend refreshes its default embedding).
        self.on_loaded = on_loaded
        self.lock_seconds = lock_seconds
        self.holder = holder_id()
        self.reachable = True
        self.last_load_id: str | None = None

    async def run(self) -> None:
        """Checks every `check_seconds` until cancelled. A process runs the first `check` as a
        startup step, before the services that read the store prepare (a restore reads the
        metadata store's tombstones: not while Recommend migrates an SQLite file)."""
        while True:
            await asyncio.sleep(self.check_seconds)
            await self.check()

    async def check(self) -> CheckOutcome:
        """One check, and the restore when it is due. Never raises (but CancelledError)."""
        try:
            record = await self.marker.loaded()
        except RecsysError as error:
            if self.reachable:
                logger.warning(
                    "feature store warm-up cannot reach the store; checking again",
                    extra={"error": error.message, "check_seconds": self.check_seconds},
                )
            self.reachable = False
            return CheckOutcome.UNREACHABLE
        if not self.reachable:
            logger.info("feature store warm-up reaches the store again")
            self.reachable = True
        if record is not None:
            await self._seen(record)
            return CheckOutcome.LOADED
        if self.metrics is not None:
            self.metrics.loaded.set(0)
        return await self._restore()

    async def _restore(self) -> CheckOutcome:
        started = time.perf_counter()
        try:
            async with exclusive_load(
                self.marker, self.holder, lock_seconds=self.lock_seconds
            ) as held:
                if not held:
                    return CheckOutcome.BUSY
                # Another process may have finished between the check and the lock.
                if (found := await self.marker.loaded()) is not None:
                    await self._seen(found)
                    return CheckOutcome.LOADED
                record, skipped = await self._load()
                if not await self.marker.mark_loaded(self.holder, record):
                    raise Unavailable(
                        "the store lost the load lock during the restore (restarted?)",
                        reason="FEATURE_LOAD_INTERRUPTED",
                    )
        except Exception as error:  # the store, the snapshot file or the metadata store
            logger.error(
                "feature snapshot restore failed; the next check tries again",
                extra={
                    "path": str(self.path),
                    "error": error.message if isinstance(error, RecsysError) else repr(error),
                },
                exc_info=not isinstance(error, RecsysError),
            )
            if self.metrics is not None:
                self.metrics.restores.labels("failed").inc()
            return CheckOutcome.FAILED
        seconds = time.perf_counter() - started
        logger.info(
            "feature snapshot restored",
            extra={
                "path": str(self.path),
                "users": int(record.get("users", 0)),
                "erased_users_skipped": skipped,
                "items": int(record.get("items", 0)),
                "embedding_version": record.get("embedding_version", ""),
                "seconds": round(seconds, 3),
            },
        )
        if self.metrics is not None:
            self.metrics.restores.labels("restored").inc()
            self.metrics.last_restore.set(time.time())
            self.metrics.last_duration.set(seconds)
        await self._seen(record)
        return CheckOutcome.RESTORED

    async def _load(self) -> tuple[dict[str, str], int]:
        snapshot = await asyncio.to_thread(load_features, self.path)
        async with self.tombstones() as metadata:
            skipped = await load_into_store(
                snapshot, self.store, metadata=metadata, batch=RESTORE_BATCH
            )
        users = len(snapshot.user_ids) - skipped
        return load_record(self.path, source="warm-up", snapshot=snapshot, users=users), skipped

    async def _seen(self, record: Mapping[str, str]) -> None:
        if self.metrics is not None:
            self.metrics.loaded.set(1)
        load_id = record.get("load_id", "")
        if load_id == self.last_load_id:
            return
        self.last_load_id = load_id
        if self.on_loaded is None:
            return
        try:
            await self.on_loaded()
        except Exception:
            logger.exception("feature store warm-up: the after-load hook failed")
