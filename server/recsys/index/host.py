"""Hosts the serving index of one shard: searches off the event loop, mutations, and verified
blue-green swaps to new snapshot versions (searches in flight keep the index they started on),
and the quality canary: the serving version's golden queries are searched after every swap and
every `canary_interval_seconds`; a version that fails is rolled back (see `recsys.index.canary`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from recsys.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    RecsysError,
    Unavailable,
)
from recsys.index.batcher import SearchBatcher
from recsys.index.canary import UNCHECKED, CanaryResult, check_version, last_good_before
from recsys.index.shard_index import ShardIndex
from recsys.index.snapshots import Expectations, SnapshotInvalid, SnapshotManager
from recsys.index.spec import MAX_EF_SEARCH, MAX_NPROBE, IndexSpec
from recsys.ports.shards import MAX_K, SearchHits

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_QUERIES = 1024


@dataclass(frozen=True)
class SwapResult:
    index_version: str
    previous_index_version: str
    item_count: int


def check_search_bounds(k: int, nprobe: int | None, ef_search: int | None) -> None:
    problems = []
    if not 1 <= k <= MAX_K:
        problems.append(FieldViolation("k", f"must be between 1 and {MAX_K}, got {k}"))
    if nprobe is not None and not 1 <= nprobe <= MAX_NPROBE:
        problems.append(
            FieldViolation("search_parameters.nprobe", f"must be between 1 and {MAX_NPROBE}")
        )
    if ef_search is not None and not 1 <= ef_search <= MAX_EF_SEARCH:
        problems.append(
            FieldViolation("search_parameters.ef_search", f"must be between 1 and {MAX_EF_SEARCH}")
        )
    if problems:
        raise InvalidArgument(problems)


class ShardHost:
    """The serving state of one shard process (or one in-process shard in embedded mode)."""

    def __init__(
        self,
        spec: IndexSpec,
        *,
        shard_id: int,
        num_shards: int,
        snapshots: SnapshotManager | None,
        expected_embedding_version: str | None = None,
        executor: concurrent.futures.Executor | None = None,
        use_gpu: bool = False,
        gpu_device: int = 0,
        on_search: Callable[[float], None] | None = None,
        batcher: SearchBatcher | None = None,
        canary_interval_seconds: float = 0.0,
    ) -> None:
        self.spec = spec
        # In-process shards sharing one: a fan-out's searches run as a few executor jobs.
        self._batcher = batcher
        # Told how long each FAISS search took (seconds, in the search thread).
        self.on_search = on_search
        self.shard_id = shard_id
        self.num_shards = num_shards
        self.snapshots = snapshots
        self.expected_embedding_version = expected_embedding_version
        self._executor = executor
        self._swap_lock = asyncio.Lock()
        self._use_gpu = use_gpu
        self._gpu_device = gpu_device
        # False until the startup load finished: searches answer UNAVAILABLE meanwhile, so the
        # Retrieve service asks another replica instead of trusting an empty index.
        self.ready = False
        # Canary: 0 turns it off. Exported by the metrics' VersionsCollector at each scrape.
        self.canary_interval_seconds = canary_interval_seconds
        self.canary_failing = False
        self.canary_failures = 0
        # Snapshot versions refused by verification (checksums, manifest, contents): a
        # corrupted publication keeps the serving version and is counted here (alerted on).
        self.snapshot_refusals = 0
        # Items upserted or deleted since the serving version was loaded: their golden hits
        # no longer hold, so the canary leaves them out.
        self._changed_ids: set[int] = set()
        self.current = ShardIndex.empty(
            spec,
            shard_id=shard_id,
            num_shards=num_shards,
            embedding_version=expected_embedding_version or "",
        )

    @property
    def expectations(self) -> Expectations:
        return Expectations(
            shard_id=self.shard_id,
            num_shards=self.num_shards,
            dimension=self.spec.dimension,
            embedding_version=self.expected_embedding_version,
        )

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)

    async def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        embedding_version: str,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[ShardIndex, list[SearchHits]]:
        """Searches the serving index; returns the index that answered and its hits."""
        check_search_bounds(k, nprobe, ef_search)
        if len(queries) > MAX_QUERIES:
            raise InvalidArgument([FieldViolation("query_count", f"must be at most {MAX_QUERIES}")])
        if not self.ready:
            raise Unavailable(
                f"shard {self.shard_id} is still loading its index", reason="SHARD_LOADING"
            )
        index = self.current  # blue-green: a swap during this search does not affect it
        if embedding_version != index.embedding_version:
            raise FailedPrecondition(
                f"queries use embedding version {embedding_version!r}, shard {self.shard_id} "
                f"serves {index.embedding_version!r}",
                reason="EMBEDDING_VERSION_MISMATCH",
            )

        def search() -> list[SearchHits]:
            started = time.perf_counter()
            found = index.search(queries, k, nprobe=nprobe, ef_search=ef_search)
            if self.on_search is not None:
                self.on_search(time.perf_counter() - started)
            return found

        if self._batcher is not None:
            return index, await self._batcher.submit(search)
        return index, await self._run(search)

    async def upsert(
        self, item_ids: np.ndarray, vectors: np.ndarray, embedding_version: str
    ) -> int:
        index = self.current
        if embedding_version != index.embedding_version:
            raise FailedPrecondition(
                f"vectors use embedding version {embedding_version!r}, shard {self.shard_id} "
                f"serves {index.embedding_version!r}",
                reason="EMBEDDING_VERSION_MISMATCH",
            )
        written = await self._run(index.upsert, item_ids, vectors)
        self._changed_ids.update(np.asarray(item_ids, dtype=np.int64).reshape(-1).tolist())
        return written

    async def delete(self, item_ids: np.ndarray) -> int:
        index = self.current
        removed = await self._run(index.delete, item_ids)
        self._changed_ids.update(np.asarray(item_ids, dtype=np.int64).reshape(-1).tolist())
        return removed

    async def load_snapshot(self, version: str | None = None) -> SwapResult:
        """Verifies a version (default: the one CURRENT names) off the loop, then swaps it in
        atomically. On failure the serving index stays and the error propagates; when CURRENT
        named the refused version it is pointed back at the serving one (automatic rollback)."""
        snapshots = self._snapshots_or_fail()
        async with self._swap_lock:
            try:
                shard = await self._run(snapshots.load, self.expectations, version)
            except SnapshotInvalid:
                self.snapshot_refusals += 1  # logged by the caller (watcher or RPC)
                if version is None or version == await self._run(
                    snapshots.store.current, self.shard_id
                ):
                    await self._restore_current_pointer()
                raise
            return await self._canary_after_swap(await self._swap(shard))

    async def _restore_current_pointer(self) -> None:
        assert self.snapshots is not None
        serving = self.current.index_version
        store = self.snapshots.store
        if serving and serving in await self._run(store.list_versions, self.shard_id):
            await self._run(store.set_current, self.shard_id, serving)
            logger.warning(
                "CURRENT pointed back at the serving snapshot",
                extra={"shard_id": self.shard_id, "index_version": serving},
            )

    def _snapshots_or_fail(self) -> SnapshotManager:
        if self.snapshots is None:
            raise FailedPrecondition("this shard has no snapshot store", reason="NO_SNAPSHOT_STORE")
        return self.snapshots

    async def start(self) -> None:
        """Loads the last good snapshot when there is one, then marks the shard ready (an empty
        shard with no snapshot is ready too: it serves upserts)."""
        if self.snapshots is not None:
            try:
                await self.load_last_good()
            except NotFound:
                logger.warning(
                    "no snapshot: serving an empty index", extra={"shard_id": self.shard_id}
                )
        self.ready = True

    async def load_last_good(self) -> SwapResult:
        """Startup: CURRENT, falling back to older verified versions (automatic rollback)."""
        snapshots = self._snapshots_or_fail()
        async with self._swap_lock:
            shard = await self._run(snapshots.load_last_good, self.expectations)
            return await self._canary_after_swap(await self._swap(shard))

    async def _swap(self, shard: ShardIndex) -> SwapResult:
        if self._use_gpu:
            await self._run(shard.use_gpu, self._gpu_device)
        await self._run(self._warn_on_mixed_quantizers, shard)
        previous = self.current
        self.current = shard
        self._changed_ids = set()
        logger.info(
            "index swapped in",
            extra={
                "shard_id": self.shard_id,
                "index_version": shard.index_version,
                "previous_index_version": previous.index_version,
                "item_count": shard.item_count,
                "on_gpu": shard.on_gpu,
            },
        )
        return SwapResult(shard.index_version, previous.index_version, shard.item_count)

    def _warn_on_mixed_quantizers(self, shard: ShardIndex) -> None:
        """Warns (and serves anyway) when other shards' CURRENT snapshots probe another coarse
        quantizer: answers stay correct, but recall at a given nprobe is no longer that of one
        index, so the shards should be rebuilt together. Mid-rollout this is expected."""
        mine = shard.quantizer_id
        if mine is None or self.snapshots is None:
            return
        try:
            others = self.snapshots.current_quantizers(self.num_shards)
        except Exception:  # a diagnostic never blocks a swap (a bad CURRENT elsewhere, say)
            logger.warning("other shards' quantizers not readable", exc_info=True)
            return
        differing = sorted(
            shard_id
            for shard_id, other in others.items()
            if shard_id != self.shard_id and other is not None and other != mine
        )
        if differing:
            logger.warning(
                "shards of different builds: their coarse quantizers differ",
                extra={
                    "shard_id": self.shard_id,
                    "quantizer_id": mine,
                    "differing_shard_ids": differing,
                },
            )

    async def watch_current(self, poll_seconds: float) -> None:
        """Loads CURRENT whenever it names a version other than the serving one."""
        if self.snapshots is None:
            return
        store = self.snapshots.store
        while True:
            await asyncio.sleep(poll_seconds)
            try:
                version = await self._run(store.current, self.shard_id)
                if version and version != self.current.index_version:
                    await self.load_snapshot(version)
            except asyncio.CancelledError:
                raise
            except RecsysError as error:
                logger.error(
                    "snapshot watcher kept the serving index",
                    extra={"shard_id": self.shard_id, "reason": error.message},
                )
            except Exception:
                logger.exception("snapshot watcher failed", extra={"shard_id": self.shard_id})

    # ------------------------------------------------------------------ quality canary

    async def check_canary(self) -> CanaryResult:
        """Searches the serving version's golden queries; on failure raises the alarm and rolls
        back to the newest older version that passes its own check."""
        async with self._swap_lock:
            result, _ = await self._check_canary_locked()
            return result

    async def watch_canary(self) -> None:
        """Checks the serving version every `canary_interval_seconds` (0: never)."""
        if self.snapshots is None or self.canary_interval_seconds <= 0:
            return
        while True:
            await asyncio.sleep(self.canary_interval_seconds)
            if not self.ready:
                continue
            try:
                await self.check_canary()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("index canary failed to run", extra={"shard_id": self.shard_id})

    async def _canary_after_swap(self, swap: SwapResult) -> SwapResult:
        """The swap's result, or the rollback's when the new version failed its canary."""
        if self.canary_interval_seconds <= 0:
            return swap
        try:
            _, rollback = await self._check_canary_locked()
        except Exception:  # the canary never fails a swap that verification passed
            logger.exception("index canary failed to run", extra={"shard_id": self.shard_id})
            return swap
        return rollback or swap

    async def _check_canary_locked(self) -> tuple[CanaryResult, SwapResult | None]:
        snapshots = self.snapshots
        index = self.current
        if snapshots is None or not index.index_version:
            return UNCHECKED, None
        check = functools.partial(
            check_version, snapshots, index, changed_ids=frozenset(self._changed_ids)
        )
        try:
            result = await self._run(check)
        except (SnapshotInvalid, NotFound) as error:
            logger.warning(
                "index canary: golden queries unreadable",
                extra={
                    "shard_id": self.shard_id,
                    "index_version": index.index_version,
                    "reason": error.message,
                },
            )
            return UNCHECKED, None
        if result.passed:
            if self.canary_failing:
                logger.info(
                    "index canary passes again",
                    extra={"shard_id": self.shard_id, "index_version": index.index_version},
                )
            self.canary_failing = False
            return result, None
        self.canary_failing = True
        self.canary_failures += 1
        logger.error(
            "index canary failed: the serving version answers unlike its build",
            extra={
                "shard_id": self.shard_id,
                "index_version": index.index_version,
                "reason": result.describe(),
            },
        )
        good = await self._run(last_good_before, snapshots, self.expectations, index.index_version)
        if good is None:
            logger.error(
                "index canary: no older version passes; still serving the failing one",
                extra={"shard_id": self.shard_id, "index_version": index.index_version},
            )
            return result, None
        await self._run(snapshots.store.set_current, self.shard_id, good.index_version)
        swap = await self._swap(good.shard)
        self.canary_failing = False
        logger.warning(
            "index canary rolled back to the last good version",
            extra={
                "shard_id": self.shard_id,
                "index_version": good.index_version,
                "refused": index.index_version,
                "canary": good.result.describe(),
            },
        )
        return result, swap
