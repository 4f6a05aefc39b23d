"""The one settings object of a recsys process.

Sources, highest priority first: explicit overrides (CLI flags), environment variables
`RECSYS_*` (nested with `__`, e.g. `RECSYS_SERVER__PORT=50052`), a TOML config file (given with
`--config` or `RECSYS_CONFIG_FILE`), then the defaults below. They merge field by field, at any
depth: a source that sets one field of a section leaves the others to the sources below it and
to the defaults. Unknown keys are refused in every source, including misspelt `RECSYS_*`
variables, so a typo fails at startup instead of being silently ignored.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from recsys.domain.validation import SURFACE_PATTERN
from recsys.errors import ConfigurationError
from recsys.index.spec import IndexSpec

ENV_PREFIX = "RECSYS_"
CONFIG_FILE_ENV = "RECSYS_CONFIG_FILE"

_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "recsys_config_file", default=None
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(_Section):
    """TLS for the gRPC port; with client_ca_file and require_client_auth, mutual TLS."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    require_client_auth: bool = False

    @model_validator(mode="after")
    def _complete(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file go together")
        if self.require_client_auth and self.client_ca_file is None:
            raise ValueError("tls.require_client_auth needs tls.client_ca_file")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("tls.client_ca_file needs tls.cert_file and tls.key_file")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class AuthSettings(_Section):
    """Caller authentication and authorisation (`grpc_server/auth.py`; docs/recommend.md,
    Security). A bearer token (`tokens`) or, with mutual TLS, one name of the client
    certificate (`certificate_identity`) names the caller; the allowlist says who may call
    what, and denies what it does not name."""

    enabled: bool = False
    # Caller name -> bearer token. Never printed: settings errors quote no values.
    tokens: dict[str, SecretStr] = {}
    # "/package.Service/Method" or "package.Service" -> caller names ("*": any authenticated
    # caller). The most specific entry decides: a method's entry, else its service's.
    allow: dict[str, tuple[str, ...]] = {}
    # Callers allowed on the methods `allow` does not name, except the internal services
    # (IndexShardService, RetrieveService, RankService, IngestService), which fall back to
    # `internal_callers` instead. Empty: whatever `allow` does not name is PERMISSION_DENIED.
    default_allow: tuple[str, ...] = ()
    # Callers allowed on the internal services' methods that `allow` does not name.
    internal_callers: tuple[str, ...] = ()
    # Services ("grpc.health.v1.Health") or methods ("/grpc.health.v1.Health/Check") answered
    # without credentials. Empty by default: with auth on, health and reflection need a
    # caller too; exempt "/grpc.health.v1.Health/Check" for probes that send none.
    exempt_services: tuple[str, ...] = ()
    # Name callers by their client certificate (needs tls.require_client_auth).
    accept_client_certificates: bool = True
    # Which name of the client certificate is the caller: its one SAN URI (a SPIFFE id such
    # as spiffe://example.org/frontend), its one SAN DNS name, or its one subject common name.
    # A certificate without that name, or with more than one, is UNAUTHENTICATED.
    certificate_identity: Literal["san_uri", "san_dns", "common_name"] = "san_uri"
    # Bearer tokens over a plaintext port that is not loopback: refused at startup unless
    # this is true (then a WARNING is logged).
    allow_plaintext_tokens: bool = False

    @field_validator("tokens")
    @classmethod
    def _tokens_are_distinct_header_values(
        cls, tokens: dict[str, SecretStr]
    ) -> dict[str, SecretStr]:
        # Checked without quoting a value: settings errors are printed.
        seen: dict[str, str] = {}
        for caller, token in tokens.items():
            value = token.get_secret_value()
            if not value or not all("!" <= character <= "~" for character in value):
                raise ValueError(
                    f"the token of {caller} must be non-empty printable ASCII without spaces"
                )
            if value in seen:
                raise ValueError(f"callers {seen[value]} and {caller} have the same token")
            seen[value] = caller
        return tokens


class ServerSettings(_Section):
    """The gRPC server of the process."""

    host: str = "127.0.0.1"
    # 0 binds an ephemeral port (tests); the bound port is logged at startup.
    port: int = Field(default=50051, ge=0, le=65535)
    max_receive_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_send_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Server pings idle clients so dead connections behind load balancers are noticed.
    keepalive_time_ms: int = Field(default=30_000, ge=1_000)
    keepalive_timeout_ms: int = Field(default=10_000, ge=100)
    # Clients may ping this often at most; must be <= the clients' keepalive time.
    min_client_ping_interval_ms: int = Field(default=10_000, ge=1_000)
    # Connections are recycled so new pods get traffic after a scale-up.
    max_connection_age_ms: int = Field(default=300_000, ge=1_000)
    max_connection_age_grace_ms: int = Field(default=30_000, ge=0)
    # Applied when the caller sends no deadline; a caller's deadline wins up to
    # `max_deadline_ms`, to which a longer one is cut (streams keep the caller's deadline).
    default_deadline_ms: int = Field(default=1_000, ge=1, le=600_000)
    max_deadline_ms: int = Field(default=30_000, ge=1, le=3_600_000)
    # gRPC's own cap (answers RESOURCE_EXHAUSTED, which clients do not retry); prefer the
    # admission control below.
    max_concurrent_rpcs: int | None = Field(default=None, ge=1)
    # Load shedding (grpc_server/admission.py): at most `max_in_flight` calls run, at most
    # `max_queue` wait for a slot and none longer than `max_queue_wait_ms`, and a call that
    # cannot finish before its deadline is refused at once: UNAVAILABLE, reason OVERLOADED,
    # retry after about `overload_retry_after_ms`.
    admission_enabled: bool = True
    max_in_flight: int = Field(default=8, ge=1, le=10_000)
    max_queue: int = Field(default=64, ge=0, le=100_000)
    max_queue_wait_ms: int = Field(default=100, ge=1, le=60_000)
    overload_retry_after_ms: int = Field(default=100, ge=1, le=60_000)
    # Per-caller fairness (auth on): one authenticated caller runs at most this many calls of
    # the recsys.v1 services at once; its next calls wait for one of its own to end (within
    # the queue wait), else RESOURCE_EXHAUSTED with reason CALLER_CONCURRENCY. None: half of
    # `max_in_flight` (rounded up), so one caller never holds every slot; 0: no limit.
    max_in_flight_per_caller: int | None = Field(default=None, ge=0, le=10_000)
    # Several processes may listen on one port (SO_REUSEPORT): `recsys up` runs replicas of
    # Recommend that way. Off by default, so a port in use is an error.
    reuse_port: bool = False
    # On SIGTERM: readiness goes NOT_SERVING, new calls are still served for the drain period
    # (so load balancers and Kubernetes stop routing), then in-flight calls get the grace period.
    shutdown_drain_seconds: float = Field(default=2.0, ge=0, le=300)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=300)
    reflection: bool = True
    # The serving process's event loop: uvloop runs grpc.aio, Redis and the pipeline's
    # coroutines with less per-call overhead than asyncio's default loop (bench/recommend.py).
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    tls: TlsSettings = TlsSettings()
    # A second, plaintext port serving grpc.health.v1 alone (nothing else is reachable there),
    # on `host`: kubelet's native gRPC probes speak plaintext only, so with TLS or mutual TLS
    # on `port` the probes use this one. None: no health port; 0: any free port (tests).
    health_port: int | None = Field(default=None, ge=0, le=65535)

    @model_validator(mode="after")
    def _default_deadline_within_the_cap(self) -> ServerSettings:
        if self.default_deadline_ms > self.max_deadline_ms:
            raise ValueError("server.default_deadline_ms must not exceed server.max_deadline_ms")
        return self

    @property
    def caller_in_flight_limit(self) -> int:
        """The per-caller bound on calls in flight (0: none)."""
        if self.max_in_flight_per_caller is None:
            return (self.max_in_flight + 1) // 2
        return self.max_in_flight_per_caller


class HealthSettings(_Section):
    """Dependency-aware health (observability/dependencies.py): every
    `dependency_interval_seconds` each dependency the process uses is probed with a cheap read
    of at most `dependency_timeout_seconds`; after `dependency_failures_before_down` failures in
    a row its health name `dependency.<name>` goes NOT_SERVING (readiness does not change)."""

    dependency_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    dependency_timeout_seconds: float = Field(default=1.0, gt=0, le=60)
    dependency_failures_before_down: int = Field(default=2, ge=1, le=100)


class MetricsSettings(_Section):
    """The Prometheus `/metrics` HTTP endpoint of the process."""

    enabled: bool = True
    host: str = "127.0.0.1"
    # 0 binds an ephemeral port; the bound port is logged at startup.
    port: int = Field(default=9464, ge=0, le=65535)


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"
    # One structured line per RPC (method, status code, duration, request id).
    access_log: bool = True


class RecommendSettings(_Section):
    """Request validation of RecommendService."""

    surfaces: tuple[str, ...] = ("homepage", "item_page", "search", "cart", "email")
    # Empty: any well-formed category is accepted (the catalogue decides what matches).
    categories: tuple[str, ...] = ()
    max_excluded_items: int = Field(default=1_000, ge=0, le=100_000)
    # The country the regional availability filter assumes when neither the request's context
    # nor the user's profile names one: a regional deployment's main market (seed "Regional
    # Deployment"). Empty: none, so items available only in some regions are left out.
    default_country: str = Field(default="", pattern=r"^([A-Z]{2})?$")
    # Adapter short names: "in_memory" (embedded) or "redis" / "sql".
    cache: str = "in_memory"
    metadata: str = "sql"
    # Seed: response cache 5 minutes, pre-computed results 1 hour.
    cache_ttl_seconds: int = Field(default=300, ge=1)
    precomputed_ttl_seconds: int = Field(default=3600, ge=1)
    cache_max_entries: int = Field(default=100_000, ge=1)
    # Seed Journey 1: 1000 candidates from retrieval; ~250 for cold start.
    candidates: int = Field(default=1000, ge=1, le=2000)
    cold_start_candidates_per_source: int = Field(default=50, ge=1)
    cold_start_similar_per_liked_item: int = Field(default=25, ge=1)
    # Seed: at most 3 items per category in the top 20.
    diversity_max_per_category: int = Field(default=3, ge=1)
    diversity_window: int = Field(default=20, ge=1)
    # Off only for offline-parity evaluation (`recsys eval`): the ranked order is served as is.
    diversity_enabled: bool = True
    # Budget of the user-feature read (seed: 10 ms), then default features.
    feature_timeout_ms: int = Field(default=10, ge=1)
    # Budget of each cache read; past it the request continues without the cache.
    cache_timeout_ms: int = Field(default=10, ge=1)
    # Budget of each metadata read (profile, history, item metadata, popular items); past it
    # the answer is degraded and flagged `metadata_unavailable`, never an error.
    metadata_timeout_ms: int = Field(default=50, ge=1)
    rate_limit_enabled: bool = True
    # Distributed mode: where RetrieveService and RankService listen. Empty: in this process
    # (the embedded mode hosts them beside Recommend).
    retrieve_target: str = ""
    rank_target: str = ""
    retrieve_timeout_ms: int = Field(default=50, ge=1)
    rank_timeout_ms: int = Field(default=100, ge=1)

    @field_validator("surfaces")
    @classmethod
    def _surfaces_are_names(cls, surfaces: tuple[str, ...]) -> tuple[str, ...]:
        if not surfaces:
            raise ValueError("at least one surface must be configured")
        for surface in surfaces:
            if not SURFACE_PATTERN.fullmatch(surface):
                raise ValueError(f"surface {surface!r} must match {SURFACE_PATTERN.pattern}")
        return surfaces


class MetadataCacheSettings(_Section):
    """Item metadata held in the serving process (adapters/metadata_cache): the SQL read on the
    Recommend path becomes a dictionary lookup. An item's cached metadata is at most
    `version_poll_seconds` behind a catalogue write of another process (the catalogue version
    is polled), and never older than `ttl_seconds` whatever happens to the poll."""

    # Off by default: it buys ~13% of the full path in process, but on 2 cores the 2x-overload
    # test (tests/grpc_server/test_overload.py) then sees refusals p95 0.6-0.9 s against its
    # 0.5 s bound (0.2 s without it); the cause is not isolated yet (docs/recommend.md).
    enabled: bool = False
    # Bounded by item count (least recently used out first): ~0.4 KB per item, so the
    # default holds the most served quarter of a 1M-item catalogue in ~100 MB.
    max_items: int = Field(default=250_000, ge=1, le=100_000_000)
    ttl_seconds: float = Field(default=300.0, gt=0, le=86_400)
    # How often the catalogue version is read; a change drops every cached item.
    version_poll_seconds: float = Field(default=5.0, gt=0, le=3_600)


class CandidatesSettings(_Section):
    """The candidate sources merged with retrieval before ranking (recsys.domain.candidates):
    item-to-item neighbours of the user's history and popularity. Retrieval's depth stays
    `recommend.candidates`. With neither (no store, popularity 0) Recommend ranks retrieval's
    candidates alone, as before."""

    # The neighbour store `item_neighbours.npz` written by `recsys train`, loaded once at
    # startup (a missing or unreadable file stops the process). None: no neighbour source.
    neighbours_path: Path | None = None
    # Candidates from the neighbour source per request.
    neighbours: int = Field(default=300, ge=0)
    # Candidates from popularity merged into every personalised pool; 0: none (popularity
    # then only stands in when retrieval finds nothing, as before).
    popularity: int = Field(default=0, ge=0)
    # Budget of the neighbour source; past it the answer is served without it, flagged
    # `partial_candidates`.
    neighbours_timeout_ms: int = Field(default=20, gt=0)
    # At most this many history items seed the neighbour source. The history is read as a set,
    # so the highest item ids the store knows are kept (as in training).
    history_limit: int = Field(default=500, ge=1)


class IngestSettings(_Section):
    """IngestService and the event sink interactions go to."""

    max_batch_size: int = Field(default=1_000, ge=1, le=10_000)
    # Adapter short name from the registry (see `recsys adapters`).
    event_sink: str = "in_memory"
    # Bound of the in-memory sink: the oldest events are dropped past it (and counted).
    in_memory_capacity: int = Field(default=100_000, ge=1)


class KafkaSettings(_Section):
    """The Kafka cluster of the write path (recsys.events): topics, the idempotent producer
    (acks=all) and the admin client. Empty bootstrap_servers: no Kafka (embedded mode)."""

    # "host:port,host:port"; required by the `kafka` event sink and `recsys serve consume`.
    bootstrap_servers: str = ""
    client_id: str = Field(default="recsys", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    # Interaction events (InteractionEvent, keyed by user id).
    interactions_topic: str = Field(
        default="recsys.interactions.v1", pattern=r"^[A-Za-z0-9._-]{1,249}$"
    )
    # Deletion events (UserDeletionEvent, keyed by user id): erasure reaching consumers.
    deletions_topic: str = Field(
        default="recsys.user-deletions.v1", pattern=r"^[A-Za-z0-9._-]{1,249}$"
    )
    # Events no consumer could process (undecodable, invalid, or failing every retry).
    dead_letter_topic: str = Field(
        default="recsys.interactions.dlq.v1", pattern=r"^[A-Za-z0-9._-]{1,249}$"
    )
    # Used when topics are created (create_topics); existing topics are left as they are.
    partitions: int = Field(default=12, ge=1, le=10_000)
    replication_factor: int = Field(default=3, ge=1, le=32)
    # Create missing topics at startup (needs the CreateTopics ACL); off where topics are
    # provisioned by the platform team.
    create_topics: bool = True
    # How long the producer keeps trying one event (message.timeout.ms); a call's own deadline
    # caps what it waits for.
    delivery_timeout_ms: int = Field(default=5_000, ge=100, le=300_000)
    # Producer batching: how long an event may wait for others to share its request.
    linger_ms: int = Field(default=5, ge=0, le=1_000)
    # Broker probe (readiness: the seed's describeCluster) and admin calls.
    request_timeout_ms: int = Field(default=2_000, ge=100, le=60_000)


class ConsumerSettings(_Section):
    """`recsys serve consume`: the consumer group applying interaction and deletion events."""

    group_id: str = Field(default="recsys-interactions", pattern=r"^[A-Za-z0-9._-]{1,249}$")
    # Events fetched and applied together (one SQL insert, one Redis round trip per store).
    batch_size: int = Field(default=500, ge=1, le=100_000)
    # How long one poll waits for the first event of a batch.
    poll_timeout_ms: int = Field(default=200, ge=1, le=10_000)
    # A member silent this long leaves the group and its partitions move (a SIGKILLed worker's
    # partitions wait this long). The broker must allow it.
    session_timeout_ms: int = Field(default=45_000, ge=1_000, le=3_600_000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100, le=60_000)
    # An event whose effects fail (not an outage) is tried this many times, then dead-lettered.
    max_attempts: int = Field(default=3, ge=1, le=100)
    retry_backoff_ms: int = Field(default=100, ge=0, le=60_000)
    # While a store the effects need is down, the batch is retried (never dead-lettered) with
    # backoff up to this bound; the partition waits and lag grows.
    outage_backoff_max_ms: int = Field(default=5_000, ge=10, le=300_000)
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000, le=86_400_000)
    # Socket timeout of the consume process's Redis calls: a 500-event script takes longer
    # than a serving read (redis.socket_timeout_ms, 50 ms), and a timed-out batch is retried.
    store_timeout_ms: int = Field(default=2_000, ge=1, le=60_000)
    # How often consumer lag per partition is exported.
    lag_interval_seconds: float = Field(default=5.0, gt=0, le=3_600)
    # Embedded mode: how often the in-process consumer drains the in-memory sink.
    embedded_drain_interval_ms: int = Field(default=100, ge=1, le=60_000)

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> ConsumerSettings:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                "consumer.heartbeat_interval_ms must be at most a third of session_timeout_ms"
            )
        return self


class RealtimeSettings(_Section):
    """Real-time features the consumers maintain (seed Simulation 1 and trending)."""

    # Adapter short name of the ItemCounters store: "in_memory" (embedded) or "redis".
    counters: str = "in_memory"
    # A user's recent interactions: a sliding window by event time (seed: 30 minutes), at most
    # recent_keep distinct items.
    recent_window_seconds: int = Field(default=1_800, ge=1, le=7 * 86_400)
    recent_keep: int = Field(default=100, ge=1, le=10_000)
    # Item counters decay exponentially by event time with these half-lives.
    popularity_half_life_hours: float = Field(default=168.0, gt=0)
    trending_half_life_minutes: float = Field(default=60.0, gt=0)
    # How long an event id is remembered by the counters (redelivery within it is ignored).
    event_marker_ttl_seconds: int = Field(default=7 * 86_400, ge=60)


class PrecomputeSettings(_Section):
    """`recsys precompute`: pre-computed answers (`precomputed:{user}:{surface}`) by activity
    tier (seed Journey 2 and "Cost Optimization"). Owned by the precompute job.

    Users with interactions in the last `activity_window_days` are ranked by how many, most
    active first; each tier takes the users ranked below the previous tier's `top_share` and
    within its own (cumulative shares of those active users, rounded up). Everyone else, the
    inactive included, is the "on demand" tier: not pre-computed, served live."""

    class Tier(_Section):
        name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
        # Cumulative: this tier ends at this share of the active users, by activity rank.
        top_share: float = Field(gt=0, le=1)
        # How long its answers live; at least the interval it is run at (cron), or users fall
        # back to the live path between runs.
        ttl_seconds: int = Field(ge=1)

    # Seed Journey 2: the top 10% hourly, 1 h TTL; "Cost Optimization": daily, then weekly.
    tiers: tuple[Tier, ...] = (
        Tier(name="hourly", top_share=0.10, ttl_seconds=3_600),
        Tier(name="daily", top_share=0.30, ttl_seconds=86_400),
        Tier(name="weekly", top_share=0.60, ttl_seconds=7 * 86_400),
    )
    activity_window_days: int = Field(default=30, ge=1, le=3_650)
    surfaces: tuple[str, ...] = ("homepage",)
    # Users computed at once (each a Recommend run without the caches).
    concurrency: int = Field(default=8, ge=1, le=1_024)
    # Past it no user is started (those in flight finish); the rest are reported not reached.
    budget_seconds: float = Field(default=3_000.0, gt=0)
    # The job's floor for every budget of the serving path (recommend.*_timeout_ms,
    # rank.timeout_ms and feature_timeout_ms, retrieve.shard_timeout_ms,
    # redis.socket_timeout_ms): nobody waits on the job, and an answer degraded by a read cut
    # at a serving budget is not written.
    read_timeout_ms: int = Field(default=2_000, ge=1, le=60_000)

    @field_validator("tiers")
    @classmethod
    def _tiers_in_order(cls, tiers: tuple[Tier, ...]) -> tuple[Tier, ...]:
        names = [tier.name for tier in tiers]
        if len(set(names)) != len(names):
            raise ValueError("tier names must be unique")
        if "on_demand" in names:
            raise ValueError("on_demand names the users no tier takes; it is not configured")
        shares = [tier.top_share for tier in tiers]
        if shares != sorted(set(shares)):
            raise ValueError("tiers go from most to least active: top_share must increase")
        return tiers

    @field_validator("surfaces")
    @classmethod
    def _surfaces_are_names(cls, surfaces: tuple[str, ...]) -> tuple[str, ...]:
        for surface in surfaces:
            if not SURFACE_PATTERN.fullmatch(surface):
                raise ValueError(f"surface {surface!r} must match {SURFACE_PATTERN.pattern}")
        if len(set(surfaces)) != len(surfaces):
            raise ValueError("surfaces must be unique")
        return surfaces


class MigrationSettings(_Section):
    """`recsys migrate-embeddings`: backfilling user embeddings of a new version (seed
    Simulation 6). Owned by the migration job."""

    # Users written per second (a token bucket): the feature store keeps serving meanwhile.
    rate_per_second: float = Field(default=500.0, gt=0, le=1_000_000)
    # Users whose stored versions are read together, checked for tombstones together and
    # written together.
    batch_size: int = Field(default=200, ge=1, le=100_000)
    # Feature store calls (version reads, writes) in flight at once (a Redis pool has a bound).
    concurrency: int = Field(default=16, ge=1, le=1_024)
    # How often a progress line goes to stderr.
    progress_interval_seconds: float = Field(default=5.0, gt=0, le=3_600)
    # How often a serving process re-reads the users per embedding version it exports
    # (`recsys_user_embeddings`): the scrape shows the last count, never waits on the store.
    metric_interval_seconds: float = Field(default=15.0, gt=0, le=3_600)


class IndexSettings(_Section):
    """Index shards: what they hold and where their snapshots live."""

    num_shards: int = Field(default=10, ge=1, le=1024)
    # Which shard `recsys serve shard` hosts (also --shard-id).
    shard_id: int = Field(default=0, ge=0)
    spec: IndexSpec = IndexSpec(dimension=64)
    # Adapter short name of the SnapshotStore ("local": a filesystem path).
    snapshot_store: str = "local"
    snapshot_dir: Path = Path("var/snapshots")
    keep_versions: int = Field(default=3, ge=1, le=100)
    # When set, snapshots of any other embedding version are refused (release manifest).
    expected_embedding_version: str | None = None
    # Poll CURRENT this often and swap to a new version; 0 disables the watcher.
    snapshot_poll_seconds: float = Field(default=10.0, ge=0)
    # Search the serving version's golden queries this often (and after every swap) and roll
    # back to the last version that passes when they drift (index.canary); 0 disables it.
    canary_interval_seconds: float = Field(default=300.0, ge=0)
    # FAISS OpenMP threads per process; 0 keeps FAISS's default (all cores). A request searches
    # one query, which FAISS does not split over threads, so serving wants 1: N shard processes
    # each starting a team per core only oversubscribe the cores (`recsys up` sets cores / N).
    faiss_threads: int = Field(default=0, ge=0, le=256)
    # Threads running FAISS calls off the event loop; in-process shards search one fan-out in
    # min(this, cores) lanes (index.batcher), FAISS releasing the GIL so the lanes overlap.
    search_workers: int = Field(default=4, ge=1, le=256)
    use_gpu: bool = False
    gpu_device: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _shard_in_range(self) -> IndexSettings:
        if self.shard_id >= self.num_shards:
            raise ValueError(f"shard_id {self.shard_id} must be below num_shards {self.num_shards}")
        return self


class RetrieveSettings(_Section):
    """The Retrieve service's fan-out."""

    # One entry per shard (in shard order), each a list of replica targets "host:port".
    # Empty: the shards run in this process (embedded mode), from index.snapshot_dir.
    shard_targets: tuple[tuple[str, ...], ...] = ()
    default_k: int = Field(default=1000, ge=1, le=2000)
    # Cap of one replica attempt; the caller's remaining time caps it further.
    shard_timeout_ms: int = Field(default=50, ge=1, le=60_000)
    merge_reserve_ms: float = Field(default=2.0, ge=0)
    # Sanity check (inner product only): a replica whose best score is below this is
    # double-checked with another replica. None disables it.
    min_top_score: float | None = 0.1
    # First-round depth per shard = k / shards * this (+10); shards whose answer may hide
    # top-k items are asked again for the full k, so results stay exact. 0: always full k.
    shard_oversampling: float = Field(default=2.0, ge=0)
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_open_seconds: float = Field(default=5.0, gt=0)
    breaker_half_open_fraction: float = Field(default=0.1, gt=0, le=1)
    breaker_success_threshold: int = Field(default=3, ge=1)
    # How often to re-read what the shards serve (dimension, versions, item counts).
    describe_interval_seconds: float = Field(default=15.0, gt=0)
    max_excluded_items: int = Field(default=10_000, ge=0, le=100_000)


class RankSettings(_Section):
    """The Rank service: its model backend, fallbacks and breaker."""

    # Ranker adapter short name: "onnx" (in-process), "triton" (KServe V2 gRPC), "rule".
    backend: str = "onnx"
    # With a remote backend: score with the in-process ONNX model while its breaker is open.
    cpu_fallback: bool = True
    # Triton-layout model repository: <repository>/<model_name>/<version>/model.onnx.
    model_repository: Path = Path("triton_models")
    model_name: str = "ranker"
    # Triton: the version to ask for; "" lets the server pick its latest.
    model_version: str = ""
    triton_url: str = "127.0.0.1:8001"
    # Used when the server has no ModelConfig RPC to tell its max_batch_size.
    triton_max_batch_size: int = Field(default=1024, ge=1)
    # Cap of one model call (seed: 100 ms); the caller's remaining time caps it further.
    timeout_ms: int = Field(default=100, ge=1, le=60_000)
    # ONNX Runtime intra-op threads per session (0: one per core). 1 by default: a batch of a
    # few thousand rows runs in well under a millisecond, where waking a thread pool costs more
    # than it saves and concurrent requests already use the other cores.
    onnx_threads: int = Field(default=1, ge=0, le=64)
    onnx_use_gpu: bool = False
    # A batch the in-process model is expected (from its recent runs) to score within this
    # runs on the event loop instead of the executor, whose hand-off alone costs ~0.1 ms;
    # 0 always uses the executor.
    onnx_inline_max_ms: float = Field(default=0.2, ge=0, le=5)
    # Look for a newer model version this often and hot-swap it; 0 disables.
    reload_poll_seconds: float = Field(default=10.0, ge=0)
    max_candidates: int = Field(default=5_000, ge=1, le=100_000)
    # Seed: opens after 5 consecutive failures; half-open lets ~10% probe; closes after
    # consecutive successes.
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_open_seconds: float = Field(default=30.0, gt=0)
    breaker_half_open_fraction: float = Field(default=0.1, gt=0, le=1)
    breaker_success_threshold: int = Field(default=3, ge=1)
    # The ranking path's feature read (the user and every candidate item, one round trip each)
    # gives up after this and scores defaults, flagged `default_features`. Wider than the
    # seed's 10 ms for the user alone: 1000 items not yet in the item cache take about 30 ms
    # from Redis on 2 cores; warm reads come from the in-process item cache.
    feature_timeout_ms: int = Field(default=50, ge=1)
    # backend "tiered" (seed cost strategy, model distillation): engaged users get the full
    # model through this backend ("triton" or "onnx"), the rest the small distilled model
    # in process (`recsys train` writes both, same version number).
    tiered_full_backend: Literal["triton", "onnx"] = "triton"
    small_model_name: str = Field(default="ranker_small", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # A user whose mean user_item_dot over the candidates reaches this gets the full model
    # (recsys.domain.rank_routing). 0.125 sends the most active ~20% of ML-100K users there,
    # the seed's share; its scale follows the embeddings, so `BENCH_ONLY=rank_tiers` measures
    # it again after retraining (docs/ranking.md, "Tiered ranking").
    full_model_min_activity: float = Field(default=0.125, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _small_model_is_another_model(self) -> RankSettings:
        if self.backend == "tiered" and self.small_model_name == self.model_name:
            raise ValueError("rank.small_model_name must differ from rank.model_name")
        return self


class FeaturesSettings(_Section):
    # Adapter short name of the FeatureStore: "in_memory" (embedded) or "redis".
    store: str = "in_memory"
    # In-process read-through cache of item features (Redis adapter): entries live this long,
    # and at most this many are kept (least recently used go first).
    item_cache_ttl_seconds: float = Field(default=60.0, ge=0)
    item_cache_max_items: int = Field(default=100_000, ge=0)
    # How long an item found missing is remembered as missing (at most item_cache_ttl_seconds):
    # short, so items written after a Redis restart or during a snapshot load are scored with
    # their features within this bound, not with defaults for the whole TTL. 0: never.
    item_cache_miss_ttl_seconds: float = Field(default=1.0, ge=0)
    # A feature snapshot (`recsys train` writes one) loaded into the store at every start;
    # meant for the in-memory store of the embedded mode, which keeps nothing across runs.
    preload_path: Path | None = None
    # A shared store's warm-up (`recsys.data.warmup`): the feature snapshot restored into it
    # whenever it is found without one (a Redis restarted empty), by one process at a time.
    # Every process holding the store checks every restore_check_seconds (one cheap read).
    restore_path: Path | None = None
    restore_check_seconds: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _preload_is_for_memory(self) -> FeaturesSettings:
        if self.preload_path is not None and self.store != "in_memory":
            # Every process of a deployment would rewrite the shared store at each start.
            raise ValueError(
                "features.preload_path is for the in_memory store; load a shared store once "
                "with `recsys data features FILE`, or restore it when empty with "
                "features.restore_path"
            )
        if self.restore_path is not None and self.store != "redis":
            raise ValueError(
                "features.restore_path is for a shared (redis) store; the in_memory store "
                "loads features.preload_path at every start"
            )
        return self


class DatabaseSettings(_Section):
    """SQL metadata: PostgreSQL (psycopg 3) in distributed mode, SQLite embedded."""

    url: str = "sqlite+aiosqlite:///var/recsys.db"
    # PostgreSQL schema holding the tables (tests use one per run); empty: the default.
    schema_name: str = Field(default="", pattern=r"^[a-z_][a-z0-9_]{0,62}$|^$")
    # Seed pool settings (HikariCP): 20 connections, 30 s to get one, pre-ping, 30 min life.
    pool_size: int = Field(default=20, ge=1)
    max_overflow: int = Field(default=0, ge=0)
    pool_timeout_seconds: float = Field(default=30.0, gt=0)
    pool_recycle_seconds: int = Field(default=1800, ge=1)
    pool_pre_ping: bool = True
    # Per statement (PostgreSQL), so a stuck query cannot hold a pooled connection forever.
    statement_timeout_ms: int = Field(default=3000, ge=1)


class ReleaseSettings(_Section):
    # Where release manifests live; when set, services serve exactly the current release's
    # model, embedding and index versions and refuse anything else.
    directory: Path | None = None


class BackupSettings(_Section):
    """`recsys backup` (recsys.backup, docs/backup.md): where backups go and how many stay."""

    # A folder, or an fsspec URL (s3://bucket/recsys, gs://..., memory://...: needs fsspec and
    # the filesystem's own package).
    location: str = Field(default="var/backups", min_length=1)
    # Retention, applied after each successful create: the newest `keep` backups stay and
    # none older than `max_age_hours` (either may be None); the newest one always stays.
    keep: int | None = Field(default=48, ge=1)
    max_age_hours: float | None = Field(default=None, gt=0)
    # Users of the quality probe (NDCG@10 of retrieval on their interactions), recorded at
    # create and measured again after a restore; 0: no probe.
    quality_users: int = Field(default=200, ge=0, le=100_000)
    # Users asked for recommendations through the serving code after a restore.
    sample_users: int = Field(default=20, ge=1, le=10_000)


class RateLimitSettings(_Section):
    # Adapter short name: "in_memory" (one process) or "redis" (shared across processes).
    limiter: str = "in_memory"
    # Seed: 100 requests per minute per user.
    requests_per_window: int = Field(default=100, ge=1)
    window_seconds: int = Field(default=60, ge=1)
    # Budget of one limiter call; when it is exceeded or the store is down, the request is
    # served (fail open, counted in recommendations_rate_limit_bypassed) unless fail_open is
    # false, which answers UNAVAILABLE instead.
    timeout_ms: int = Field(default=100, ge=1)
    fail_open: bool = True


REDIS_NODE_PATTERN = r"^[A-Za-z0-9_.-]+:[0-9]{1,5}$"


class RedisSettings(_Section):
    """Where the Redis adapters' keys live (docs/operations.md, Redis deployment)."""

    # "standalone": one server at `url`; "cluster": a Redis Cluster discovered from `url`'s
    # host and `startup_nodes` (keys sharded by hash slot, docs/recommend.md); "sentinel": the
    # master that `sentinels` name for `master_name`, followed across failovers.
    mode: Literal["standalone", "cluster", "sentinel"] = "standalone"
    # Standalone: the server. Cluster: one startup node (database 0 only). Sentinel: only the
    # scheme, credentials and database apply (the sentinels name the master's address).
    url: str = "redis://127.0.0.1:6379/0"
    # Cluster only: more "host:port" nodes to discover it from, in case url's node is down.
    startup_nodes: tuple[Annotated[str, Field(pattern=REDIS_NODE_PATTERN)], ...] = ()
    # Sentinel only: the sentinels' "host:port" addresses and the master name they watch.
    sentinels: tuple[Annotated[str, Field(pattern=REDIS_NODE_PATTERN)], ...] = ()
    master_name: str = ""
    # Every key is prefixed "<namespace>:" so deployments (and test runs) can share a server.
    namespace: str = Field(default="recsys", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    socket_timeout_ms: int = Field(default=50, ge=1)
    connect_timeout_ms: int = Field(default=50, ge=1)
    # Connections per server (in cluster mode, per node).
    max_connections: int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> RedisSettings:
        scheme, _, rest = self.url.partition("://")
        if scheme not in ("redis", "rediss") or not rest:
            raise ValueError("redis.url must be redis://host:port/db or rediss://...")
        if self.startup_nodes and self.mode != "cluster":
            raise ValueError("redis.startup_nodes applies to redis.mode = 'cluster' only")
        if (self.sentinels or self.master_name) and self.mode != "sentinel":
            raise ValueError("redis.sentinels and master_name apply to redis.mode = 'sentinel'")
        if self.mode == "sentinel" and not (self.sentinels and self.master_name):
            raise ValueError("redis.mode = 'sentinel' needs redis.sentinels and master_name")
        if self.mode == "cluster" and rest.partition("?")[0].partition("/")[2] not in ("", "0"):
            raise ValueError("a Redis Cluster has database 0 only: end redis.url with /0")
        return self


# What an outbound channel leads to: the platform's own services, or the model server.
OutboundTarget = Literal["retrieve", "rank", "shards", "model_server"]


class ClientTlsSettings(_Section):
    """TLS of outbound channels; with cert_file and key_file, mutual TLS (the certificate names
    this process to the server)."""

    enabled: bool = False
    # CA certificates the server's certificate must chain to; None: the system's roots.
    ca_file: FilePath | None = None
    # This process's client certificate (chain) and its private key, for mutual TLS.
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    # The name the server's certificate must carry when it differs from the target's host.
    server_name_override: str = ""

    @model_validator(mode="after")
    def _complete(self) -> ClientTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        given = [
            name
            for name in ("ca_file", "cert_file", "key_file", "server_name_override")
            if getattr(self, name)
        ]
        if given and not self.enabled:
            raise ValueError(f"{', '.join(given)} set without enabled = true")
        return self


class OutboundSettings(_Section):
    """Credentials of this process's outbound gRPC channels: Recommend to Retrieve and Rank,
    Retrieve to the shards (`tls`), Rank to the model server (`model_server_tls`: usually
    another PKI than the platform's own). One channel factory applies them
    (`recsys.adapters.channels`)."""

    tls: ClientTlsSettings = ClientTlsSettings()
    model_server_tls: ClientTlsSettings = ClientTlsSettings()
    # Sent as `authorization: Bearer <token>` on every call: `tokens` per target, `token` to
    # every target without its own. Never logged; over a plaintext channel it travels in clear.
    tokens: dict[OutboundTarget, SecretStr] = {}
    token: SecretStr | None = None

    @field_validator("tokens")
    @classmethod
    def _tokens_are_header_values(
        cls, tokens: dict[OutboundTarget, SecretStr]
    ) -> dict[OutboundTarget, SecretStr]:
        for target, token in tokens.items():
            _check_token(token, f"tokens.{target}")
        return tokens

    @field_validator("token")
    @classmethod
    def _token_is_a_header_value(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None:
            _check_token(token, "token")
        return token

    def tls_for(self, target: OutboundTarget) -> ClientTlsSettings:
        return self.model_server_tls if target == "model_server" else self.tls

    def token_for(self, target: OutboundTarget) -> SecretStr | None:
        return self.tokens.get(target, self.token)


def _check_token(token: SecretStr, name: str) -> None:
    # Checked without quoting the value: settings errors are printed.
    value = token.get_secret_value()
    if not value or not all("!" <= character <= "~" for character in value):
        raise ValueError(f"outbound {name} must be non-empty printable ASCII without spaces")


class RecsysSettings(BaseSettings):
    """Settings of one recsys process; validated once at startup."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        # A section given in part (one RECSYS_* variable, a TOML table, an override) is merged
        # over its default, so its other fields keep their defaults (index.spec.dimension).
        nested_model_default_partial_update=True,
    )

    # embedded: one process, no external services; distributed: one process per service.
    mode: Literal["embedded", "distributed"] = "embedded"
    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    metrics: MetricsSettings = MetricsSettings()
    health: HealthSettings = HealthSettings()
    logging: LoggingSettings = LoggingSettings()
    recommend: RecommendSettings = RecommendSettings()
    metadata_cache: MetadataCacheSettings = MetadataCacheSettings()
    candidates: CandidatesSettings = CandidatesSettings()
    ingest: IngestSettings = IngestSettings()
    kafka: KafkaSettings = KafkaSettings()
    consumer: ConsumerSettings = ConsumerSettings()
    realtime: RealtimeSettings = RealtimeSettings()
    precompute: PrecomputeSettings = PrecomputeSettings()
    migration: MigrationSettings = MigrationSettings()
    index: IndexSettings = IndexSettings()
    retrieve: RetrieveSettings = RetrieveSettings()
    rank: RankSettings = RankSettings()
    features: FeaturesSettings = FeaturesSettings()
    redis: RedisSettings = RedisSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    database: DatabaseSettings = DatabaseSettings()
    release: ReleaseSettings = ReleaseSettings()
    backup: BackupSettings = BackupSettings()
    outbound: OutboundSettings = OutboundSettings()

    @model_validator(mode="after")
    def _shard_targets_match(self) -> RecsysSettings:
        targets = self.retrieve.shard_targets
        if targets and len(targets) != self.index.num_shards:
            raise ValueError(
                f"retrieve.shard_targets lists {len(targets)} shards, "
                f"index.num_shards is {self.index.num_shards}"
            )
        if any(not replicas for replicas in targets):
            raise ValueError("every shard in retrieve.shard_targets needs at least one replica")
        return self

    @model_validator(mode="after")
    def _ports_differ(self) -> RecsysSettings:
        if (
            self.metrics.enabled
            and self.metrics.port != 0
            and self.metrics.port == self.server.port
            and self.metrics.host == self.server.host
        ):
            raise ValueError("metrics.port must differ from server.port")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def _unknown_environment_keys(environ: Mapping[str, str]) -> list[str]:
    """`RECSYS_*` variables that name no setting (pydantic-settings would ignore them)."""
    unknown = []
    for name in environ:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper == CONFIG_FILE_ENV:
            continue
        path = upper[len(ENV_PREFIX) :].lower().split("__")
        model: type[BaseModel] = RecsysSettings
        for depth, part in enumerate(path):
            field = model.model_fields.get(part)
            if field is None:
                unknown.append(name)
                break
            annotation = field.annotation
            is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
            if depth == len(path) - 1:
                break
            if not is_section:
                unknown.append(name)
                break
            assert isinstance(annotation, type)
            model = annotation
    return unknown


def load_settings(
    config_file: Path | str | None = None,
    **overrides: Any,
) -> RecsysSettings:
    """Builds and validates the settings; raises ConfigurationError naming what is wrong."""
    environ = os.environ
    path_text = config_file if config_file is not None else environ.get(CONFIG_FILE_ENV)
    path = Path(path_text) if path_text else None
    if path is not None and not path.is_file():
        raise ConfigurationError(f"config file {path} does not exist")
    unknown = _unknown_environment_keys(environ)
    if unknown:
        raise ConfigurationError(
            "unknown settings in the environment: " + ", ".join(sorted(unknown))
        )
    token = _config_file.set(path)
    try:
        return RecsysSettings(**overrides)
    except ValidationError as error:
        # Not str(error), nor chained: pydantic quotes each wrong input, and a misplaced or
        # mistyped token (`[auth] token = ...`, `tokens = "..."`) would be printed.
        raise ConfigurationError(f"invalid settings: {describe_validation_error(error)}") from None
    except ValueError as error:  # a TOML syntax error: its position, not its text
        raise ConfigurationError(f"invalid settings: {error}") from None
    finally:
        _config_file.reset(token)


def describe_validation_error(error: ValidationError) -> str:
    """Every error of a validation as `location: message`, without the values given."""
    lines = []
    for detail in error.errors(include_url=False, include_context=False, include_input=False):
        location = ".".join(str(part) for part in detail["loc"]) or "settings"
        lines.append(f"{location}: {detail['msg']}")
    return f"{len(lines)} error(s): " + "; ".join(lines)
