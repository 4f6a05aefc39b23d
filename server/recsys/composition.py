"""What one server process is built from, typed and built once. Composition sits above the
layers it wires: servicers -> domain -> ports <- adapters.

`Components` creates each shared adapter on first use (feature store, metadata, cache, rate
limiter, event sink, snapshot manager, FAISS search threads) and registers its `close` with the
process's exit stack, so every service hosted in the process gets the same one (one event sink
per process: an erasure through Recommend also reaches what Ingest buffered). It also holds
the domain objects the hosted services build (retriever, ranking chain, scorer, pipeline, shard
hosts), which the embedded Recommend uses in process and tests reach by attribute.

The release is resolved once, here: `settings` are the configured settings with the current
release's versions pinned (`rank.model_version`, `index.expected_embedding_version`), so no
adapter looks the release up itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from recsys.observability.dependencies import DependencyMonitor
from recsys.observability.events import ConsumerMetrics
from recsys.observability.metrics import (
    BreakerMetrics,
    DatabasePoolCollector,
    DependencyMetrics,
    FeatureStoreMetrics,
    IndexMetrics,
    VersionsCollector,
    new_registry,
)
from recsys.ports.cache import RESPONSES, RecommendationCache
from recsys.ports.counters import ItemCounters
from recsys.ports.events import EventSink
from recsys.ports.features import FeatureStore
from recsys.ports.metadata import MetadataRepository
from recsys.ports.ranker import Ranker
from recsys.ports.rate_limit import RateLimiter
from recsys.registry import create_adapter
from recsys.settings import RecsysSettings

if TYPE_CHECKING:
    from recsys.domain.ingestion import InteractionEffects
    from recsys.domain.ranking import RankingChain
    from recsys.domain.recommend.pipeline import RecommendPipeline
    from recsys.domain.retrieval import Retriever
    from recsys.domain.scoring import CandidateScorer
    from recsys.events.consumer import EventConsumer
    from recsys.index.batcher import SearchBatcher
    from recsys.index.host import ShardHost
    from recsys.index.snapshots import SnapshotManager
    from recsys.release import ReleaseManifest
    from recsys.similarity.neighbours import ItemNeighbours

logger = logging.getLogger(__name__)


def pinned_by(settings: RecsysSettings, release: ReleaseManifest | None) -> RecsysSettings:
    """The settings a process serves with: the release's model ("ranker:3" -> "3") and
    embedding versions replace the configured ones."""
    if release is None:
        return settings
    rank = settings.rank.model_copy(
        update={"model_version": release.model_version.partition(":")[2]}
    )
    index = settings.index.model_copy(
        update={"expected_embedding_version": release.embedding_version}
    )
    return settings.model_copy(update={"rank": rank, "index": index})


class Components:
    def __init__(
        self,
        settings: RecsysSettings,
        *,
        resources: contextlib.AsyncExitStack | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        from recsys.release import current_release

        self.release = current_release(settings.release.directory)
        self.settings = pinned_by(settings, self.release)
        self.resources = resources or contextlib.AsyncExitStack()
        self.registry = registry or new_registry()
        # What the process serves (model, embedding and index versions), read at each scrape.
        self.registry.register(VersionsCollector(self))
        # Run once the server listens (index loading, model server connection...).
        self.startup_hooks: list[Callable[[], Awaitable[None]]] = []
        # The dependencies this process uses, probed in the background once it has started
        # (`monitor_dependencies`): the shared adapters below and the services' `build`
        # register them; GrpcApplication publishes them as health names `dependency.<name>`.
        health = self.settings.health
        self.dependencies = DependencyMonitor(
            interval_seconds=health.dependency_interval_seconds,
            timeout_seconds=health.dependency_timeout_seconds,
            failures_before_down=health.dependency_failures_before_down,
        )
        self.dependencies.add_listener(DependencyMetrics(self.registry).record)
        # What the hosted services build; None (or empty) until one of them does.
        self.shard_hosts: list[ShardHost] = []
        self.retriever: Retriever | None = None
        self.ranking_chain: RankingChain | None = None
        self.candidate_scorer: CandidateScorer | None = None
        self.recommend_pipeline: RecommendPipeline | None = None
        self.consumer: EventConsumer | None = None
        # The item-to-item neighbour store (`item_neighbours`), once read.
        self._item_neighbours: ItemNeighbours | None = None
        # Set by `fail`: a background worker the process exists for died; the server stops
        # and the process exits non-zero, so its supervisor (recsys up, Kubernetes) restarts it.
        self.fatal_error: str | None = None
        self.stop_requested = asyncio.Event()

    def run_in_background(self, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Starts the coroutine once the server is ready; cancels it at shutdown."""

        async def start() -> None:
            task = asyncio.create_task(factory())

            async def stop() -> None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

            self.resources.push_async_callback(stop)

        self.startup_hooks.append(start)

    def fail(self, message: str) -> None:
        """Asks the process to stop because something it cannot serve without has died."""
        if self.fatal_error is None:
            self.fatal_error = message
        self.stop_requested.set()

    def monitor_dependencies(self) -> None:
        """Starts the dependency probes after the startup hooks registered so far (call it once
        every service is built): an index still loading at startup is not an outage."""
        if self.dependencies.names:
            self.run_in_background(self.dependencies.run)

    def adapter(self, port: str, name: str) -> object:
        """A new adapter of `port`, closed with the process."""
        adapter = create_adapter(port, name, self.settings)
        close = getattr(adapter, "close", None)
        if close is not None:
            self.resources.push_async_callback(close)
        return adapter

    # ------------------------------------------------------------------ shared adapters

    @functools.cached_property
    def feature_store(self) -> FeatureStore:
        store = self.adapter("feature_store", self.settings.features.store)
        assert isinstance(store, FeatureStore)
        if self.settings.features.preload_path is not None:
            # Before the hooks of the services that read the store.
            self.startup_hooks.append(functools.partial(self._preload, store))
        if self.settings.features.restore_path is not None:
            self._restore_when_empty()
        self.dependencies.register("feature_store", store.get_default_user_embedding)
        from recsys.observability.metrics import UserEmbeddingVersionsCollector

        # Counted after the preload above (a hook registered before this one).
        versions = UserEmbeddingVersionsCollector(
            store.embedding_version_counts,
            interval_seconds=self.settings.migration.metric_interval_seconds,
        )
        self.registry.register(versions)
        self.run_in_background(versions.run)
        return store

    async def _preload(self, store: FeatureStore) -> None:
        """The feature snapshot, less the users erased since it was written (their tombstones
        are in the metadata store): a restart must not bring an erased user back."""
        from recsys.data.erasures import erasure_records
        from recsys.data.features_file import load_features, load_into_store

        path = self.settings.features.preload_path
        assert path is not None
        snapshot = await asyncio.to_thread(load_features, path)
        async with erasure_records(self.settings) as tombstones:
            skipped = await load_into_store(snapshot, store, metadata=tombstones)
        logger.info(
            "feature snapshot loaded",
            extra={
                "path": str(path),
                "users": len(snapshot.user_ids) - skipped,
                "erased_users_skipped": skipped,
                "items": len(snapshot.item_ids),
                "embedding_version": snapshot.embedding_version,
            },
        )

    def _restore_when_empty(self) -> None:
        """features.restore_path: the shared store's warm-up (`recsys.data.warmup`), on a client
        of its own; once a load is seen, a hosted Recommend reads the default embedding again
        (a process started beside an empty store has none)."""
        from recsys.adapters.redis.warmup import RedisLoadMarker, bulk_feature_store
        from recsys.data.erasures import erasure_records
        from recsys.data.warmup import FeatureRestoreMetrics, FeatureWarmup

        features = self.settings.features
        assert features.restore_path is not None
        marker = RedisLoadMarker.from_settings(self.settings)
        self.resources.push_async_callback(marker.close)

        async def loaded() -> None:
            if self.recommend_pipeline is not None:
                await self.recommend_pipeline.refresh_default_embedding()

        warmup = FeatureWarmup(
            features.restore_path,
            marker=marker,
            store=bulk_feature_store(self.settings, marker),
            tombstones=functools.partial(erasure_records, self.settings),
            check_seconds=features.restore_check_seconds,
            metrics=FeatureRestoreMetrics(self.registry),
            on_loaded=loaded,
        )

        async def first_check() -> None:
            # A process started beside an empty store that wins the lock is ready once it
            # restored the store; the others go on (the lock is taken, or the store is down).
            await warmup.check()

        self.startup_hooks.append(first_check)
        self.run_in_background(warmup.run)

    @functools.cached_property
    def metadata(self) -> MetadataRepository:
        metadata = self.adapter("metadata", self.settings.recommend.metadata)
        assert isinstance(metadata, MetadataRepository)
        pool = getattr(metadata, "pool_status", None)
        if pool is not None:
            self.registry.register(DatabasePoolCollector(pool))
        self.dependencies.register("metadata", metadata.ping)
        if self.settings.metadata_cache.enabled:
            from recsys.adapters.metadata_cache.cached import CachedMetadataRepository

            # The poll stops before the inner repository (registered above) closes.
            cached = CachedMetadataRepository(metadata, self.settings.metadata_cache)
            self.resources.push_async_callback(cached.stop_polling)
            return cached
        return metadata

    @functools.cached_property
    def recommendation_cache(self) -> RecommendationCache:
        cache = self.adapter("recommendation_cache", self.settings.recommend.cache)
        assert isinstance(cache, RecommendationCache)
        self.dependencies.register(
            "recommendation_cache", functools.partial(cache.get, RESPONSES, "health-probe", "probe")
        )
        return cache

    @functools.cached_property
    def rate_limiter(self) -> RateLimiter:
        limiter = self.adapter("rate_limiter", self.settings.rate_limit.limiter)
        assert isinstance(limiter, RateLimiter)
        return limiter

    @functools.cached_property
    def event_sink(self) -> EventSink:
        sink = self.adapter("event_sink", self.settings.ingest.event_sink)
        assert isinstance(sink, EventSink)
        if type(sink).ping is not EventSink.ping:
            # A sink on a broker: its probe, and its topics created before serving.
            self.dependencies.register("kafka", sink.ping)
            self.startup_hooks.append(sink.prepare)
        return sink

    @functools.cached_property
    def item_counters(self) -> ItemCounters:
        counters = self.adapter("item_counters", self.settings.realtime.counters)
        assert isinstance(counters, ItemCounters)
        return counters

    @functools.cached_property
    def event_effects(self) -> InteractionEffects:
        """What consumed events change: SQL rows, real-time features, counters, caches."""
        from recsys.domain.ingestion import InteractionEffects

        return InteractionEffects(
            metadata=self.metadata,
            features=self.feature_store,
            counters=self.item_counters,
            cache=self.recommendation_cache,
        )

    @functools.cached_property
    def consumer_metrics(self) -> ConsumerMetrics:
        return ConsumerMetrics(self.registry)

    @functools.cached_property
    def breaker_metrics(self) -> BreakerMetrics:
        return BreakerMetrics(self.registry)

    @functools.cached_property
    def feature_store_metrics(self) -> FeatureStoreMetrics:
        return FeatureStoreMetrics(self.registry)

    @functools.cached_property
    def index_metrics(self) -> IndexMetrics:
        return IndexMetrics(self.registry)

    async def item_neighbours(self) -> ItemNeighbours | None:
        """The neighbour store of `candidates.neighbours_path` (None when unset), read once per
        process in a thread; ConfigurationError naming the path when it cannot be read."""
        path = self.settings.candidates.neighbours_path
        if path is None:
            return None
        if self._item_neighbours is None:
            from recsys.candidate_sources import read_neighbour_store

            self._item_neighbours = await asyncio.to_thread(read_neighbour_store, path)
        return self._item_neighbours

    def ranker(self, name: str) -> Ranker:
        ranker = self.adapter("ranker", name)
        assert isinstance(ranker, Ranker)
        return ranker

    # ------------------------------------------------------------------ index shards

    @functools.cached_property
    def snapshot_manager(self) -> SnapshotManager:
        from recsys.index.snapshots import SnapshotManager
        from recsys.ports.snapshots import SnapshotStore

        index = self.settings.index
        store = create_adapter("snapshot_store", index.snapshot_store, self.settings)
        assert isinstance(store, SnapshotStore)
        return SnapshotManager(store, keep_versions=index.keep_versions)

    @functools.cached_property
    def search_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """FAISS searches run here, off the event loop; FAISS is configured first (once)."""
        from recsys.index.faiss_module import faiss

        index = self.settings.index
        if index.faiss_threads:
            faiss.omp_set_num_threads(index.faiss_threads)
        logger.info(
            "faiss configured",
            extra={
                "faiss_version": faiss.__version__,
                "omp_threads": faiss.omp_get_max_threads(),
                "gpus_visible": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
                "use_gpu": index.use_gpu,
            },
        )
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=index.search_workers, thread_name_prefix="faiss"
        )
        self.resources.callback(executor.shutdown, wait=True, cancel_futures=True)
        return executor

    @functools.cached_property
    def search_batcher(self) -> SearchBatcher:
        """The in-process shards' searches of one fan-out run as a few executor jobs (lanes),
        one per core at most: fewer thread hops than one job per shard."""
        import os

        from recsys.index.batcher import SearchBatcher

        lanes = min(self.settings.index.search_workers, os.cpu_count() or 1)
        return SearchBatcher(self.search_executor, lanes=lanes)

    def shard_host(self, shard_id: int) -> ShardHost:
        """A shard host loading from the snapshot store; with a release, a snapshot built from
        other embeddings is refused at load."""
        from recsys.index.host import ShardHost

        index = self.settings.index
        host = ShardHost(
            index.spec,
            shard_id=shard_id,
            num_shards=index.num_shards,
            snapshots=self.snapshot_manager,
            expected_embedding_version=index.expected_embedding_version,
            executor=self.search_executor,
            use_gpu=index.use_gpu,
            gpu_device=index.gpu_device,
            on_search=self.index_metrics.searched(shard_id),
            batcher=self.search_batcher,
            canary_interval_seconds=index.canary_interval_seconds,
        )
        self.shard_hosts.append(host)
        if index.canary_interval_seconds > 0:
            self.run_in_background(host.watch_canary)
        return host
