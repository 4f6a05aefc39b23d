"""Prometheus metrics of a process, in a registry owned by the process (no global registry).

gRPC server metrics follow the names of go-grpc-prometheus, so the usual dashboards work:
`grpc_server_started_total`, `grpc_server_handled_total{grpc_code}` and the latency histogram
`grpc_server_handling_seconds`. The seed's metrics keep the seed's names
(`recommendations_latency_*_seconds`, `model_inference_*_total`, `faiss_search_latency_seconds`,
`feature_store_latency_seconds`...). Label sets that a ratio divides by are created up front,
so a rate reads 0 before the first error instead of returning nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from recsys.observability.dependencies import DependencyState

logger = logging.getLogger(__name__)

# Seconds; dense under 100 ms where the serving budgets live, with every threshold of the
# seed's alerts as a boundary (5, 10, 15, 20, 45, 80 and 150 ms), so quantiles against them
# are exact rather than interpolated.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.045, 0.05, 0.08,
    0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# What a caller of the pipeline reads as candidate generation (the seed's "candidates" timer).
CANDIDATE_STAGES = frozenset(
    {"retrieval", "neighbours", "popularity", "popular_in_category", "similar_to_liked"}
)
DEGRADATION_KINDS = (
    "fallback_ranking", "partial_retrieval", "default_features", "popularity_candidates",
    "metadata_unavailable", "partial_candidates",
)  # fmt: skip


def new_registry() -> CollectorRegistry:
    """A process's registry: its own metrics plus the process' CPU, memory and file
    descriptors, and Python's GC and version."""
    # `*_created` series double every counter and histogram for a timestamp nobody graphs.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class GrpcServerMetrics:
    """Per-method request counts by status code and a latency histogram."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter(
            "grpc_server_started",
            "RPCs started on the server.",
            labels,
            registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            (*labels, "grpc_code"),
            registry=registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from receiving a request to sending its status, in seconds.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # The readiness health status as a number, for whoever reads metrics rather than
        # health checks (a supervisor replacing one replica of several on a shared port).
        self.ready = Gauge(
            "recsys_server_ready",
            "1 while the server is ready (readiness SERVING), else 0.",
            registry=registry,
        )


@dataclass
class MetricsEndpoint:
    """A running `/metrics` HTTP endpoint."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_endpoint(registry: CollectorRegistry, host: str, port: int) -> MetricsEndpoint:
    """Serves the registry at http://host:port/metrics from a daemon thread."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    endpoint = MetricsEndpoint(server=server, thread=thread)
    logger.info(
        "metrics endpoint listening",
        extra={"address": f"http://{host}:{endpoint.port}/metrics"},
    )
    return endpoint


class RetrievalMetrics:
    """Fan-out health of the Retrieve service (seed: FAISS search latency, shard failures)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.shard_seconds = Histogram(
            "recsys_retrieve_shard_seconds",
            "Latency of one shard replica search, in seconds.",
            ("shard_id",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.shard_failures = Counter(
            "recsys_retrieve_shard_failures",
            "Shard replica searches that failed, by reason.",
            ("shard_id", "reason"),
            registry=registry,
        )
        self.sanity_retries = Counter(
            "recsys_retrieve_sanity_retries",
            "Replica answers that failed the sanity check (empty or low top score).",
            ("shard_id",),
            registry=registry,
        )
        self.partial_results = Counter(
            "recsys_retrieve_partial_results",
            "Retrieve answers built without some shards.",
            registry=registry,
        )

    # The Retriever's observer (recsys.domain.observers.RetrievalObserver).

    def shard_searched(self, shard_id: int, seconds: float) -> None:
        self.shard_seconds.labels(str(shard_id)).observe(seconds)

    def shard_failed(self, shard_id: int, reason: str) -> None:
        self.shard_failures.labels(str(shard_id), reason).inc()

    def sanity_retry(self, shard_id: int) -> None:
        self.sanity_retries.labels(str(shard_id)).inc()

    def partial_result(self) -> None:
        self.partial_results.inc()


class BreakerMetrics:
    """Circuit breaker states and transitions of one process (shared by its services)."""

    LEVELS = {"closed": 0, "half_open": 1, "open": 2}

    def __init__(self, registry: CollectorRegistry) -> None:
        self.state = Gauge(
            "recsys_circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ("breaker",),
            registry=registry,
        )
        self.transitions = Counter(
            "recsys_circuit_breaker_transitions",
            "Circuit breaker state changes.",
            ("breaker", "to_state"),
            registry=registry,
        )

    def track(self, breaker: str) -> None:
        self.state.labels(breaker).set(self.LEVELS["closed"])
        for to_state in self.LEVELS:
            self.transitions.labels(breaker, to_state)

    def record(self, breaker: str, to_state: str) -> None:
        self.state.labels(breaker).set(self.LEVELS[to_state])
        self.transitions.labels(breaker, to_state).inc()


class DependencyMetrics:
    """`recsys_dependency_up{dependency}`: 1 while the process's probe of the dependency
    answers, 0 once it is down (observability/dependencies.py); alert on `== 0`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.up = Gauge(
            "recsys_dependency_up",
            "1 while the dependency answers this process's probe, 0 while it is down.",
            ("dependency",),
            registry=registry,
        )

    async def record(self, state: DependencyState) -> None:
        self.up.labels(state.name).set(1 if state.up else 0)


class FeatureStoreMetrics:
    """Feature store reads on the serving path (one per process: Recommend and Rank share it in
    the embedded mode)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = Histogram(
            "feature_store_latency_seconds",
            "Feature store reads on the serving path, in seconds: the user's features "
            "(Recommend) and the candidates' (Rank).",
            ("read",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        for read in ("user", "candidates"):
            self.seconds.labels(read)


class IndexMetrics:
    """The FAISS search inside a shard (seed: FAISS search latency), without queueing."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.search_seconds = Histogram(
            "faiss_search_latency_seconds",
            "One FAISS search of a shard index, in seconds.",
            ("shard_id",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def searched(self, shard_id: int) -> Callable[[float], None]:
        return self.search_seconds.labels(str(shard_id)).observe


class RankingMetrics:
    """Which backend scored, model latency and model errors (seed: model inference errors)."""

    MODELS = ("primary", "cpu_model")
    ERROR_KINDS = ("timeout", "unavailable", "refused")

    def __init__(
        self, registry: CollectorRegistry, *, features: FeatureStoreMetrics | None = None
    ) -> None:
        self.inference_requests = Counter(
            "model_inference_requests",
            "Calls to a ranking model backend, by model (primary or the CPU fallback).",
            ("model",),
            registry=registry,
        )
        self.inference_errors = Counter(
            "model_inference_errors",
            "Calls to the primary ranking model that failed, by kind.",
            ("kind",),
            registry=registry,
        )
        self.feature_store = features or FeatureStoreMetrics(registry)
        for model in self.MODELS:
            self.inference_requests.labels(model)
        for kind in self.ERROR_KINDS:
            self.inference_errors.labels(kind)
        self.ranked = Counter(
            "recsys_rank_requests",
            "Rank calls by the backend that scored them.",
            ("backend",),
            registry=registry,
        )
        self.model_errors = Counter(
            "recsys_rank_model_errors",
            "Model backend calls that failed, by kind.",
            ("kind",),
            registry=registry,
        )
        self.default_features = Counter(
            "recsys_rank_default_features",
            "Rank calls scored with default features (the feature store was slow or down).",
            registry=registry,
        )
        self.model_seconds = Histogram(
            "recsys_rank_model_seconds",
            "Latency of scoring one request's candidates, by backend, in seconds.",
            ("backend",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # Tiered ranking (rank.backend "tiered"): requests by the tier that served them.
        self.tier_requests = Counter(
            "recsys_rank_tier_requests",
            "Rank calls under tiered ranking, by tier (full model or small distilled model).",
            ("tier",),
            registry=registry,
        )

    # The ranking chain's and scorer's observer (recsys.domain.observers.RankingObserver).

    def scored(self, backend: str, seconds: float) -> None:
        self.ranked.labels(backend).inc()
        self.model_seconds.labels(backend).observe(seconds)

    def model_called(self, model: str) -> None:
        self.inference_requests.labels(model).inc()

    def model_error(self, kind: str) -> None:
        self.model_errors.labels(kind).inc()
        self.inference_errors.labels(kind).inc()

    def features_read(self, seconds: float) -> None:
        self.feature_store.seconds.labels("candidates").observe(seconds)

    def default_features_used(self) -> None:
        self.default_features.inc()

    def routed(self, tier: str) -> None:
        self.tier_requests.labels(tier).inc()


class RecommendMetrics:
    """The seed's recommendation metrics: requests, cache hits, cold starts, empty answers,
    degradations and per-stage latency."""

    SOURCES = ("response_cache", "precomputed", "single_flight")

    def __init__(
        self, registry: CollectorRegistry, *, features: FeatureStoreMetrics | None = None
    ) -> None:
        self.feature_store = features or FeatureStoreMetrics(registry)
        self.requests = Counter(
            "recommendations_requests", "Recommend calls answered.", registry=registry
        )
        self.candidates_seconds = Histogram(
            "recommendations_latency_candidates_seconds",
            "Candidate generation of one Recommend call (retrieval, or the popularity and "
            "cold-start sources), in seconds.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ranking_seconds = Histogram(
            "recommendations_latency_ranking_seconds",
            "Ranking of one Recommend call's candidates (the Rank service or in process), in "
            "seconds.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.cache_hits = Counter(
            "recommendations_cache_hits",
            "Recommend calls served from the response cache or pre-computed results.",
            ("source",),
            registry=registry,
        )
        self.cold_start = Counter(
            "recommendations_cold_start", "Cold-start answers.", registry=registry
        )
        self.empty = Counter(
            "recommendations_empty", "Answers with no items at all.", registry=registry
        )
        self.degraded = Counter(
            "recommendations_degraded",
            "Answers shaped by a degradation, by kind.",
            ("kind",),
            registry=registry,
        )
        self.rate_limited_calls = Counter(
            "recommendations_rate_limited", "Calls refused by the rate limit.", registry=registry
        )
        self.rate_limit_bypassed_calls = Counter(
            "recommendations_rate_limit_bypassed",
            "Calls served unchecked because the rate limiter was down or slow (fail open).",
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "recommendations_stage_seconds",
            "Time spent in each pipeline stage, in seconds.",
            ("stage",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.total_seconds = Histogram(
            "recommendations_latency_total_seconds",
            "Total Recommend latency inside the service, in seconds.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage_failures = Counter(
            "recommendations_stage_failures",
            "Dependency reads of the pipeline that failed and fell back, by stage and kind.",
            ("stage", "kind"),
            registry=registry,
        )
        for source in self.SOURCES:
            self.cache_hits.labels(source)
        for kind in DEGRADATION_KINDS:
            self.degraded.labels(kind)

    # The pipeline's observer (recsys.domain.recommend.observer.RecommendObserver).

    def stage_finished(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(seconds)
        if stage in CANDIDATE_STAGES:
            self.candidates_seconds.observe(seconds)
        elif stage == "ranking":
            self.ranking_seconds.observe(seconds)
        elif stage == "features":
            self.feature_store.seconds.labels("user").observe(seconds)

    def stage_failed(self, stage: str, kind: str) -> None:
        self.stage_failures.labels(stage, kind).inc()

    def cache_hit(self, source: str) -> None:
        self.cache_hits.labels(source).inc()

    def rate_limited(self) -> None:
        self.rate_limited_calls.inc()

    def rate_limit_bypassed(self) -> None:
        self.rate_limit_bypassed_calls.inc()

    def answered(
        self, seconds: float, *, cold_start: bool, empty: bool, degradations: Sequence[str]
    ) -> None:
        self.total_seconds.observe(seconds)
        self.requests.inc()
        if cold_start:
            self.cold_start.inc()
        if empty:
            self.empty.inc()
        for kind in degradations:
            self.degraded.labels(kind).inc()

    def failed(self, seconds: float) -> None:
        self.total_seconds.observe(seconds)


@dataclass(frozen=True)
class PoolStatus:
    """A connection pool at one moment (see SqlMetadataRepository.pool_status)."""

    size: int  # connections the pool may hold open (pool size plus overflow)
    in_use: int
    checkouts: int  # connections handed out so far
    wait_seconds: float  # total time callers waited for them


class DatabasePoolCollector(Collector):
    """The metadata store's connection pool at each scrape (seed "Database Connection Pool":
    alert above 80% usage, track the wait for connections)."""

    def __init__(self, status: Callable[[], PoolStatus]) -> None:
        self.status = status

    def collect(self) -> Iterable[Metric]:
        status = self.status()
        yield GaugeMetricFamily(
            "db_pool_connections_max", "Connections the pool may hold open.", status.size
        )
        yield GaugeMetricFamily(
            "db_pool_connections_in_use", "Connections checked out now.", status.in_use
        )
        yield GaugeMetricFamily(
            "db_pool_usage_ratio",
            "Share of the pool checked out now (alert above 0.8).",
            status.in_use / status.size if status.size else 0.0,
        )
        yield CounterMetricFamily(
            "db_pool_checkouts", "Connections handed out by the pool.", status.checkouts
        )
        yield CounterMetricFamily(
            "db_pool_wait_seconds",
            "Time spent waiting for a pooled connection, in seconds.",
            status.wait_seconds,
        )


class VersionsCollector(Collector):
    """What the process serves, read at each scrape: the ranking model's version, and each
    hosted shard's index and embedding versions (build-info style gauges of value 1), and each
    hosted shard's quality canary (`recsys_index_canary_failing`, alerted on, and the count of
    failed checks; see `recsys.index.canary`) and the snapshot versions it refused to load
    (`recsys_index_snapshot_refusals_total`, alerted on)."""

    def __init__(self, components: Any) -> None:
        self.components = components

    def collect(self) -> Iterable[Metric]:
        model = GaugeMetricFamily(
            "recsys_model_info", "The ranking model version served.", labels=["model_version"]
        )
        chain = self.components.ranking_chain
        if chain is not None and chain.primary.model_version:
            model.add_metric([chain.primary.model_version], 1)
        yield model
        index = GaugeMetricFamily(
            "recsys_index_info",
            "The index and embedding versions each hosted shard serves.",
            labels=["shard_id", "index_version", "embedding_version"],
        )
        for host in self.components.shard_hosts:
            current = host.current
            index.add_metric(
                [str(host.shard_id), current.index_version, current.embedding_version], 1
            )
        yield index
        failing = GaugeMetricFamily(
            "recsys_index_canary_failing",
            "1 while the serving index fails its golden-query canary (no good version to roll "
            "back to), else 0.",
            labels=["shard_id"],
        )
        failures = CounterMetricFamily(
            "recsys_index_canary_failures",
            "Golden-query canary checks the serving index failed (each one rolls back).",
            labels=["shard_id"],
        )
        refusals = CounterMetricFamily(
            "recsys_index_snapshot_refusals",
            "Times this shard refused to load a snapshot version (checksum, manifest or "
            "contents check; the serving version stayed). A version CURRENT keeps naming is "
            "refused again at each poll.",
            labels=["shard_id"],
        )
        for host in self.components.shard_hosts:
            failing.add_metric([str(host.shard_id)], int(host.canary_failing))
            failures.add_metric([str(host.shard_id)], host.canary_failures)
            refusals.add_metric([str(host.shard_id)], host.snapshot_refusals)
        yield failing
        yield failures
        yield refusals


class UserEmbeddingVersionsCollector(Collector):
    """`recsys_user_embeddings{embedding_version}`: users holding an embedding of each version
    (seed Simulation 6: they move to the new one as `recsys migrate-embeddings` backfills
    them). `run` counts in the background every `interval_seconds`; a scrape (on the metrics
    endpoint's thread) exports the last count and never waits on the feature store."""

    def __init__(
        self, counts: Callable[[], Awaitable[Mapping[str, int]]], *, interval_seconds: float
    ) -> None:
        self.counts = counts
        self.interval_seconds = interval_seconds
        # Replaced whole, never changed in place: a scrape reads one consistent count.
        self.latest: dict[str, int] = {}

    async def refresh(self) -> None:
        counts = await self.counts()
        # A version the store no longer counts (its last user migrated) reads 0 rather than
        # vanishing, so "the old version reached 0" can be graphed and alerted on.
        self.latest = {**dict.fromkeys(self.latest, 0), **counts}

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                # The store is down or slow: keep exporting the last count, try again later.
                logger.warning("cannot count user embeddings per version", exc_info=True)
            await asyncio.sleep(self.interval_seconds)

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "recsys_user_embeddings",
            "Users holding an embedding of each version in the feature store.",
            labels=["embedding_version"],
        )
        for version, users in sorted(self.latest.items()):
            family.add_metric([version], users)
        yield family
