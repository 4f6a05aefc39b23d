"""The event write path on one local Kafka-protocol broker (Tansu, in-memory storage):

(a) consumer throughput: N interaction events produced to a topic, then consumed from the start
    by a bare confluent-kafka loop (consume(500) + store_offsets, no effects) and by our
    `EventConsumer` (`recsys serve consume` built in-process: SQL row on PostgreSQL, Redis
    recent-interactions window, Redis item counters, response-cache invalidation), each in a
    consumer group of its own; both timed from the group's partition assignment to having
    seen all N (the join is reported apart). Where ours spends its batches is measured by
    timing each effect's store calls (the union of their intervals).
(b) event-to-feature freshness: `recsys serve consume` in its own process while the benchmark
    produces at a steady rate with event_time = now; for a sample of events (each on a user of
    its own) the benchmark polls the feature store (`get_user_features`) until the item is in
    the user's recent interactions. The consumer's own `recsys_consumer_event_age_seconds`
    histogram (bucketed) is reported beside it.
(c) `recsys precompute` users/s: the job (run_precompute) for the "hourly" tier of the users
    (a) left in PostgreSQL, on a small synthetic catalogue, under a time budget.

Stores: the shared Redis with a namespace of its own, PostgreSQL with a schema of its own; both
removed at the end, as is the broker.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from confluent_kafka import Consumer, Producer, TopicPartition
from sqlalchemy import text

from bench import processes
from bench.common import latency_summary
from recsys import services
from recsys.adapters.redis.features import RedisFeatureStore
from recsys.deploy.ports import free_port
from recsys.domain.interactions import Interaction, InteractionKind
from recsys.events.admin import KafkaAdmin
from recsys.events.broker import start_broker
from recsys.events.codec import encode_interaction, key_of
from recsys.events.producer import producer_config
from recsys.metadata.database import create_migration_engine
from recsys.metadata.migrate import upgrade
from recsys.settings import DatabaseSettings, KafkaSettings, load_settings

EVENTS = int(os.environ.get("BENCH_EVENTS_N", "50000"))
USERS = int(os.environ.get("BENCH_EVENTS_USERS", "10000"))
ITEMS = 5_000
PARTITIONS = 4
RATE = int(os.environ.get("BENCH_EVENTS_RATE", "1000"))
FRESHNESS_SECONDS = float(os.environ.get("BENCH_EVENTS_FRESHNESS_SECONDS", "20"))
# One event in SAMPLE_EVERY is a freshness probe (a user of its own, polled until visible).
SAMPLE_EVERY = 20
POLL_SECONDS = 0.005
REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_URL = os.environ.get(
    "RECSYS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
# Tansu holds a group join until about half the session timeout has passed.
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_MS = 1000
REDIS_TIMEOUT_MS = int(os.environ.get("BENCH_EVENTS_REDIS_TIMEOUT_MS", "1000"))
KINDS = [
    InteractionKind.VIEW,
    InteractionKind.CLICK,
    InteractionKind.LIKE,
    InteractionKind.PURCHASE,
]


def sections(
    bootstrap: str, run: str, namespace: str, database: DatabaseSettings
) -> dict[str, Any]:
    """The settings sections of a consume worker on this run's topics and stores."""
    return {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "interactions_topic": f"interactions-{run}",
            "deletions_topic": f"deletions-{run}",
            "dead_letter_topic": f"dead-letters-{run}",
            "partitions": PARTITIONS,
            "replication_factor": 1,
        },
        "consumer": {
            "group_id": f"recsys-{run}",
            "session_timeout_ms": SESSION_TIMEOUT_MS,
            "heartbeat_interval_ms": HEARTBEAT_MS,
            "lag_interval_seconds": 1.0,
        },
        # The default 50 ms socket timeout is shorter than a 500-event counters script on a
        # loaded 2-core machine: the batch is retried as an outage, again and again.
        "redis": {"url": REDIS_URL, "namespace": namespace, "socket_timeout_ms": REDIS_TIMEOUT_MS},
        "database": {"url": database.url, "schema_name": database.schema_name},
        "features": {"store": "redis"},
        "recommend": {"cache": "redis"},
        "realtime": {"counters": "redis"},
        "logging": {"access_log": False},
    }


def environment_of(settings: dict[str, Any]) -> dict[str, str]:
    return {
        f"RECSYS_{section.upper()}__{key.upper()}": str(value).lower()
        if isinstance(value, bool)
        else str(value)
        for section, values in settings.items()
        for key, value in values.items()
    }


# ---------------------------------------------------------------------------- producing


def produce_backlog(kafka: KafkaSettings, count: int) -> float:
    """`count` interaction events on the interactions topic, keyed by user; returns seconds."""
    producer = Producer({**producer_config(kafka), "linger.ms": 20})
    now = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    for index in range(count):
        event = Interaction(
            f"bench-{index}", f"user{index % USERS}", (index * 7919) % ITEMS,
            KINDS[index % len(KINDS)], 0.0, now,
        )  # fmt: skip
        while True:
            try:
                producer.produce(
                    kafka.interactions_topic, key=key_of(event.user_id),
                    value=encode_interaction(event),
                )  # fmt: skip
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(60)
    assert left == 0, f"{left} events not acknowledged"
    return time.perf_counter() - started


# ---------------------------------------------------------------------------- (a) throughput


def bare_loop(kafka: KafkaSettings, count: int) -> dict[str, float]:
    """A bare confluent-kafka consumer group: consume(500) + store_offsets, no effects."""
    assigned: list[float] = []

    def on_assign(_consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        if not assigned:
            assigned.append(time.perf_counter())

    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"bare-{uuid.uuid4().hex[:8]}",
            "enable.auto.offset.store": False,
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 1000,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": HEARTBEAT_MS,
        }
    )
    started = time.perf_counter()
    consumer.subscribe([kafka.interactions_topic, kafka.deletions_topic], on_assign=on_assign)
    seen = 0
    deadline = started + 120
    try:
        while seen < count and time.perf_counter() < deadline:
            messages = consumer.consume(500, 0.2)
            good = [message for message in messages if message.error() is None]
            seen += len(good)
            if good:
                last: dict[tuple[str, int], int] = {}
                for message in good:
                    last[(message.topic(), message.partition())] = message.offset() + 1  # type: ignore[index,operator]
                consumer.store_offsets(
                    offsets=[TopicPartition(t, p, o) for (t, p), o in last.items()]
                )
        finished = time.perf_counter()
    finally:
        consumer.close()
    assert seen >= count, f"the bare loop saw {seen} of {count} events"
    return {"join_s": assigned[0] - started, "seconds": finished - assigned[0]}


class Timed:
    """Wraps a store: the intervals during which each named coroutine method was running."""

    def __init__(
        self, target: Any, names: tuple[str, ...], log: dict[str, list[tuple[float, float]]]
    ):
        self._target = target
        self._names = names
        self._log = log

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if name not in self._names:
            return attribute

        async def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await attribute(*args, **kwargs)
            finally:
                self._log[name].append((began, time.perf_counter()))

        return timed


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


async def ours(config: dict[str, Any], count: int) -> dict[str, Any]:
    settings = load_settings(
        server={"port": 0, "shutdown_drain_seconds": 0.0},
        metrics={"enabled": False},
        **config,
    )
    app = await services.build_application(settings, ["consume"])
    components = app.components
    effects = components.event_effects
    log: dict[str, list[tuple[float, float]]] = defaultdict(list)
    effects.metadata = Timed(effects.metadata, ("erased_user_ids", "record_interactions"), log)
    effects.features = Timed(effects.features, ("record_events",), log)
    effects.counters = Timed(effects.counters, ("record",), log)
    effects.cache = Timed(effects.cache, ("invalidate_responses",), log)
    registry = components.registry
    topic = settings.kafka.interactions_topic

    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return registry.get_sample_value(name, labels or {}) or 0.0

    started = time.perf_counter()
    await app.start()
    joined = finished = 0.0
    try:
        deadline = started + 180
        while time.perf_counter() < deadline:
            now = time.perf_counter()
            if not joined and sample("recsys_consumer_assigned_partitions") > 0:
                joined = now
            done = sum(
                sample("recsys_consumer_events_total", {"topic": topic, "outcome": outcome})
                for outcome in ("applied", "duplicate")
            )
            if done >= count:
                finished = now
                break
            await asyncio.sleep(0.01)
    finally:
        await app.shutdown()
    assert finished, "our consumer did not apply every event in time"
    batches = sample("recsys_consumer_batch_seconds_count")
    batch_seconds = sample("recsys_consumer_batch_seconds_sum")
    retries = sample("recsys_consumer_retries_total", {"reason": "outage"})
    active = finished - joined
    effect_seconds = {name: union_seconds(intervals) for name, intervals in log.items()}
    users = {name: len(intervals) for name, intervals in log.items()}
    return {
        "join_s": joined - started,
        "seconds": active,
        "batches": int(batches),
        "batch_seconds": batch_seconds,
        "outage_retries": int(retries),
        "effect_seconds": effect_seconds,
        "calls": users,
    }


# ---------------------------------------------------------------------------- (b) freshness


def scrape(url: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def histogram_quantile(quantile: float, metrics: dict[str, float], name: str) -> float:
    """Prometheus' histogram_quantile (linear within the bucket) on one scrape."""
    buckets = sorted(
        (float(key.split('le="')[1].split('"')[0]), value)
        for key, value in metrics.items()
        if key.startswith(f"{name}_bucket{{")
    )
    total = buckets[-1][1]
    rank = quantile * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / max(cumulative - lower_count, 1e-12)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, cumulative
    return lower_bound


def paced_producer(
    kafka: KafkaSettings, run: str, seconds: float, probes: dict[str, tuple[int, float]],
    lock: threading.Lock, stats: dict[str, float],
) -> None:  # fmt: skip
    """Produces RATE events/s for `seconds` (event_time = now) in 10 ms ticks; every
    SAMPLE_EVERY-th event goes to a probe user of its own (recorded with its produce time)."""
    producer = Producer(producer_config(kafka))
    tick = 0.01
    per_tick = RATE * tick
    started = time.perf_counter()
    produced = 0
    while True:
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            break
        due = int(min(elapsed + tick, seconds) * RATE)
        while produced < due:
            now = dt.datetime.now(dt.UTC)
            if produced % SAMPLE_EVERY == 0:
                user = f"probe-{run}-{produced}"
                item = produced % ITEMS
                with lock:
                    probes[user] = (item, time.time())
            else:
                user, item = f"user{produced % USERS}", (produced * 7919) % ITEMS
            event = Interaction(
                f"fresh-{produced}", user, item, KINDS[produced % len(KINDS)], 0.0, now
            )
            producer.produce(
                kafka.interactions_topic, key=key_of(user), value=encode_interaction(event)
            )
            produced += 1
        producer.poll(0)
        next_tick = started + (int(elapsed / tick) + 1) * tick
        time.sleep(max(0.0, next_tick - time.perf_counter()))
    assert producer.flush(30) == 0
    stats["produced"] = produced
    stats["seconds"] = time.perf_counter() - started
    del per_tick


async def poll_probes(
    namespace: str, probes: dict[str, tuple[int, float]], lock: threading.Lock,
    producing: threading.Thread, latencies: list[float],
) -> int:  # fmt: skip
    """Polls each pending probe until its item is in the user's recent interactions (the
    sorted set `get_user_features` reads: one ZSCORE per pending probe, all in one pipelined
    round trip); returns how many probes were never seen within 10 s of the end."""
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = RedisFeatureStore(client, namespace=namespace).keys
    pending: dict[str, tuple[int, float]] = {}
    end_deadline = None
    try:
        while True:
            with lock:
                pending.update(probes)
                probes.clear()
            if pending:
                users = list(pending)
                async with client.pipeline(transaction=False) as pipe:
                    for user in users:
                        pipe.zscore(keys.user_recent(user), str(pending[user][0]))
                    scores = await pipe.execute()
                seen_at = time.time()
                for user, score in zip(users, scores, strict=True):
                    if score is not None:
                        latencies.append(seen_at - pending.pop(user)[1])
            if not producing.is_alive():
                end_deadline = end_deadline or time.monotonic() + 10
                if not pending or time.monotonic() > end_deadline:
                    return len(pending)
            await asyncio.sleep(POLL_SECONDS)
    finally:
        await client.aclose()


async def freshness(
    kafka: KafkaSettings, run: str, namespace: str, metrics_url: str
) -> dict[str, Any]:
    # Wait for the worker's group join (its partitions assigned) before producing.
    deadline = time.monotonic() + 30
    while scrape(metrics_url).get("recsys_consumer_assigned_partitions", 0) <= 0:
        assert time.monotonic() < deadline, "the consume worker did not join its group"
        await asyncio.sleep(0.1)
    probes: dict[str, tuple[int, float]] = {}
    lock = threading.Lock()
    stats: dict[str, float] = {}
    producing = threading.Thread(
        target=paced_producer,
        args=(kafka, run, FRESHNESS_SECONDS, probes, lock, stats),
        daemon=True,
    )
    latencies: list[float] = []
    producing.start()
    missed = await poll_probes(namespace, probes, lock, producing, latencies)
    producing.join()
    await asyncio.sleep(1.5)  # the worker's last batch observed
    metrics = scrape(metrics_url)
    age = "recsys_consumer_event_age_seconds"
    return {
        "polled": latency_summary(latencies),
        "missed_probes": missed,
        "produced": int(stats["produced"]),
        "offered_rate": round(stats["produced"] / stats["seconds"], 1),
        "histogram_p50_ms": round(histogram_quantile(0.5, metrics, age) * 1000, 1),
        "histogram_p99_ms": round(histogram_quantile(0.99, metrics, age) * 1000, 1),
        "histogram_count": int(metrics.get(f"{age}_count", 0)),
        "batch_mean_ms": round(
            metrics.get("recsys_consumer_batch_seconds_sum", 0)
            / max(1, metrics.get("recsys_consumer_batch_seconds_count", 0))
            * 1000,
            2,
        ),
    }


# ---------------------------------------------------------------------------- (c) precompute

PRECOMPUTE_ITEMS = 5_000
PRECOMPUTE_DIMENSION = 32
PRECOMPUTE_BUDGET_SECONDS = float(os.environ.get("BENCH_EVENTS_PRECOMPUTE_SECONDS", "10"))


async def precompute(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`recsys precompute` (run_precompute, what the command runs) for the "hourly" tier of
    the users (a) left in PostgreSQL, on a synthetic catalogue: 5,000 items x 32 dims in 2
    IVF shards, their features and metadata, and an embedding for every user; a budget of
    PRECOMPUTE_BUDGET_SECONDS, so users/s is users reached over the job's seconds."""
    import numpy as np

    from bench.common import ROOT
    from recsys.adapters.snapshots.local import LocalSnapshotStore
    from recsys.adapters.sql.metadata import SqlMetadataRepository
    from recsys.data.synthetic import clustered_embeddings
    from recsys.index.builder import build_shard_snapshots
    from recsys.index.embeddings_file import ItemEmbeddings
    from recsys.index.snapshots import SnapshotManager
    from recsys.index.spec import IndexSpec, IndexType
    from recsys.metadata.database import create_engine
    from recsys.ports.features import ItemFeatures, UserEmbedding
    from recsys.ports.metadata import ItemMetadata
    from recsys.precompute import run_precompute

    version = "emb-bench"
    data = clustered_embeddings(
        PRECOMPUTE_ITEMS, PRECOMPUTE_DIMENSION, clusters=50, spread=0.8, seed=5
    )
    build_shard_snapshots(
        ItemEmbeddings(data.item_ids, data.vectors, version),
        IndexSpec(dimension=PRECOMPUTE_DIMENSION, index_type=IndexType.IVF_FLAT, nprobe=8),
        num_shards=2, index_version="idx-bench",
        snapshots=SnapshotManager(LocalSnapshotStore(folder / "snapshots")),
    )  # fmt: skip
    redis_section = config["redis"]
    store = RedisFeatureStore(
        aioredis.Redis.from_url(REDIS_URL), namespace=redis_section["namespace"]
    )
    categories = 20
    popularity = np.random.default_rng(6).power(0.3, PRECOMPUTE_ITEMS).astype(np.float32)
    await store.put_item_features(
        {
            item: ItemFeatures(
                f"c{item % categories}", float(popularity[item]), 0.5, data.vectors[item]
            )
            for item in range(PRECOMPUTE_ITEMS)
        }
    )
    now = dt.datetime.now(dt.UTC)
    queries = data.queries(USERS, seed=7)
    for start in range(0, USERS, 32):
        await asyncio.gather(
            *(
                store.put_user_embedding(f"user{user}", UserEmbedding(queries[user], version, now))
                for user in range(start, min(USERS, start + 32))
            )
        )
    await store.put_default_user_embedding(UserEmbedding(queries.mean(axis=0), version, now))
    await store.close()
    database = DatabaseSettings(**config["database"])
    metadata = SqlMetadataRepository(create_engine(database))
    await metadata.upsert_items(
        [
            ItemMetadata(item, f"c{item % categories}", popularity=float(popularity[item]))
            for item in range(PRECOMPUTE_ITEMS)
        ]
    )
    await metadata.close()
    settings = load_settings(
        server={"port": 0},
        metrics={"enabled": False},
        index={
            "snapshot_dir": str(folder / "snapshots"),
            "num_shards": 2,
            "spec": {"dimension": PRECOMPUTE_DIMENSION},
            "snapshot_poll_seconds": 0,
        },
        rank={"model_repository": str(ROOT / "triton_models"), "reload_poll_seconds": 0},
        **{key: config[key] for key in ("redis", "database", "features", "recommend", "logging")},
    )
    report = await run_precompute(
        settings, chosen=["hourly"], budget_seconds=PRECOMPUTE_BUDGET_SECONDS,
        concurrency=settings.precompute.concurrency,
    )  # fmt: skip
    return report.as_dict()


# ---------------------------------------------------------------------------- the run


async def _cleanup(namespace: str, database: DatabaseSettings) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(match=f"{namespace}:*", count=10_000)]
    for start in range(0, len(keys), 10_000):
        await client.delete(*keys[start : start + 10_000])
    await client.aclose()
    engine = create_migration_engine(database.model_copy(update={"schema_name": ""}))
    with engine.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{database.schema_name}" CASCADE'))
    engine.dispose()


def run() -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="recsys-bench-events-"))
    port = free_port()
    broker = start_broker(port, log_path=folder / "broker.log")
    bootstrap = f"127.0.0.1:{port}"
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    database = DatabaseSettings(url=POSTGRES_URL, schema_name=f"bench_{uuid.uuid4().hex[:10]}")
    try:
        upgrade(database)
        run_a = uuid.uuid4().hex[:8]
        config_a = sections(bootstrap, run_a, namespace, database)
        kafka_a = KafkaSettings(**config_a["kafka"])
        asyncio.run(KafkaAdmin(kafka_a).ensure_topics())
        produce_seconds = produce_backlog(kafka_a, EVENTS)
        bare = bare_loop(kafka_a, EVENTS)
        sys.stderr.write(f"bench events: bare loop {bare}\n")
        our = asyncio.run(ours(config_a, EVENTS))
        sys.stderr.write(f"bench events: ours {our}\n")

        run_b = uuid.uuid4().hex[:8]
        config_b = sections(bootstrap, run_b, namespace, database)
        kafka_b = KafkaSettings(**config_b["kafka"])
        server = processes.wait_ready(
            processes.start(["consume"], environment_of(config_b)), timeout=60
        )
        try:
            fresh = asyncio.run(freshness(kafka_b, run_b, namespace, server.metrics_url))
        finally:
            server.stop()
        try:
            pre: dict[str, Any] = asyncio.run(precompute(config_a, folder))
        except Exception as error:
            pre = {"error": f"{type(error).__name__}: {error}"[:300]}
        sys.stderr.write(f"bench events: precompute {pre}\n")
    finally:
        broker.terminate()
        broker.wait(10)
        asyncio.run(_cleanup(namespace, database))
        shutil.rmtree(folder, ignore_errors=True)
    return summarize(produce_seconds, bare, our, fresh, pre)


def summarize(
    produce_seconds: float, bare: dict[str, float], our: dict[str, Any],
    fresh: dict[str, Any], pre: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    bare_rate = EVENTS / bare["seconds"]
    our_rate = EVENTS / our["seconds"]
    ratio = our_rate / bare_rate
    batch_total = our["batch_seconds"] or 1.0
    shares = {
        name: round(seconds / batch_total, 3)
        for name, seconds in sorted(our["effect_seconds"].items(), key=lambda kv: -kv[1])
    }
    polled = fresh["polled"]
    rows = [
        {
            "measure": "throughput",
            "setup": "bare confluent-kafka loop: consume(500) + store_offsets, no effects",
            "result": f"{bare_rate:,.0f} events/s",
            "aim": "-",
            "detail": f"{EVENTS:,} events in {bare['seconds']:.2f} s after the join "
            f"(join {bare['join_s']:.1f} s, not counted)",
        },
        {
            "measure": "throughput",
            "setup": "EventConsumer (`recsys serve consume` in-process): SQL row, recent window, "
            "item counters, cache invalidation",
            "result": f"{our_rate:,.0f} events/s ({ratio:.2f}x bare)",
            "aim": ">= 0.5x bare",
            "detail": f"{EVENTS:,} events in {our['seconds']:.2f} s after the join (join "
            f"{our['join_s']:.1f} s, not counted); {our['batches']} batches, mean "
            f"{our['batch_seconds'] / max(1, our['batches']) * 1000:.0f} ms; "
            f"{our['outage_retries']} outage retries",
        },
        {
            "measure": "freshness (polled)",
            "setup": f"`recsys serve consume` process, {RATE:,} events/s offered for "
            f"{FRESHNESS_SECONDS:g} s; produce time to the item in get_user_features",
            "result": f"p50 {polled['p50_ms']:.0f} ms, p99 {polled['p99_ms']:.0f} ms",
            "aim": "p99 < 1000 ms",
            "detail": f"{polled['samples']} probes (1 event in {SAMPLE_EVERY}, each on a user of "
            f"its own, polled every {POLL_SECONDS * 1000:g} ms), {fresh['missed_probes']} never "
            f"seen; {fresh['produced']:,} events at {fresh['offered_rate']:,.0f}/s",
        },
        {
            "measure": "freshness (histogram)",
            "setup": "the same run: recsys_consumer_event_age_seconds (event time to effects "
            "stored, bucketed, interpolated like histogram_quantile)",
            "result": f"p50 {fresh['histogram_p50_ms']:.0f} ms, "
            f"p99 {fresh['histogram_p99_ms']:.0f} ms",
            "aim": "p99 < 1000 ms",
            "detail": f"{fresh['histogram_count']:,} events; mean batch "
            f"{fresh['batch_mean_ms']} ms",
        },
        precompute_row(pre),
    ]
    load = os.getloadavg()[0]
    limits = ", ".join(f"{name} {share:.0%}" for name, share in shares.items())
    return {
        "title": "Events: consumer throughput and freshness on one local broker (Tansu)",
        "description": (
            f"(a) {EVENTS:,} interaction events ({USERS:,} users, {ITEMS:,} items, "
            f"{PARTITIONS} partitions) produced first ({produce_seconds:.1f} s), then consumed "
            "from the start by each consumer in a group of its own, timed from the group's "
            "partition assignment to having seen all of them (the join, about half of "
            f"session.timeout.ms={SESSION_TIMEOUT_MS} on Tansu, is reported apart). Ours "
            "applies every effect for real: PostgreSQL (a schema of its own), Redis (a "
            "namespace of its own). (b) `recsys serve consume` in its own process; the "
            "benchmark produces at a steady rate with event_time = now and polls the feature "
            "store for probe events. Broker, consumer, stores and benchmark share the machine."
        ),
        "rows": rows,
        "conclusion": (
            f"Ours runs at {ratio:.2f}x the bare loop (aim: 0.5x"
            f"{', met' if ratio >= 0.5 else ', not met on this machine'}): "
            f"{our['batch_seconds'] / our['seconds']:.0%} of its time is applying the effects "
            f"(mean batch of 500: {our['batch_seconds'] / max(1, our['batches']) * 1000:.0f} ms "
            f"against {bare['seconds'] / (EVENTS / 500) * 1000:.1f} ms for the bare loop to "
            "fetch and store 500), the Kafka side (fetch, decode, store offsets) the rest. "
            "The effects run one batch at a time, each a chain of round trips (tombstones, "
            "SQL insert, then the recent window and counters together, then invalidation), "
            "so a batch costs their sum. Share of batch "
            f"time each effect's store calls were running (they overlap: counters and the "
            f"recent window run together): {limits}. Freshness p99 {polled['p99_ms']:.0f} ms "
            f"polled, {fresh['histogram_p99_ms']:.0f} ms by the histogram (aim: under 1 s"
            f"{', met' if polled['p99_ms'] < 1000 else ', not met'}, with little margin): at "
            f"{RATE:,} events/s the worker runs batches of a few hundred events back to back "
            f"(mean {fresh['batch_mean_ms']:.0f} ms), so an event waits for the batch in "
            "progress, then its own: about two batch times, and the p99 follows the machine's "
            f"load (load average {load:.1f} on {os.cpu_count()} CPUs at the end, other "
            "engineers' processes included; runs here gave p99 0.66 to 1.6 s). "
            f"redis.socket_timeout_ms is {REDIS_TIMEOUT_MS} ms here: with the default 50 ms a "
            "500-event counters script timed out on this machine and the batch was retried as "
            "an outage without end (no progress in 180 s). Precompute: "
            f"{pre.get('users_per_second', 'not measured')} users/s, each a full Recommend "
            "without the caches (retrieval over 2 shards, ranking, filters) on one surface."
        ),
        "bare": bare,
        "ours": our,
        "freshness": fresh,
        "effect_shares": shares,
        "events": EVENTS,
        "precompute": pre,
        "load_average": round(load, 2),
        "redis_socket_timeout_ms": REDIS_TIMEOUT_MS,
    }


def precompute_row(pre: dict[str, Any]) -> dict[str, str]:
    if "error" in pre or not pre.get("tiers"):
        return {
            "measure": "precompute",
            "setup": "`recsys precompute` users/s on a synthetic world",
            "result": "TODO: not measured",
            "aim": "-",
            "detail": f"the run failed: {pre.get('error', 'no tier')}",
        }
    tier = pre["tiers"][0]
    return {
        "measure": "precompute",
        "setup": f"`recsys precompute --tier hourly` (run_precompute in-process): "
        f"{PRECOMPUTE_ITEMS:,} items x {PRECOMPUTE_DIMENSION} dims, 2 IVF shards, ONNX ranker",
        "result": f"{pre['users_per_second']:,.1f} users/s",
        "aim": "-",
        "detail": f"{tier['reached']} of {tier['users']} hourly-tier users in "
        f"{pre['seconds']:.1f} s (budget {pre['budget_seconds']:g} s, concurrency "
        f"{pre['concurrency']}), {len(pre['surfaces'])} surface; written {tier['written']}, "
        f"skipped {sum(tier['skipped'].values())}, failed {sum(tier['failed'].values())}",
    }
