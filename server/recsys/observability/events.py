"""Metrics of the event consumers (`recsys serve consume` and the embedded in-process one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Event age at apply time: from event time (producer's clock) to the effects being stored.
FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
OUTCOMES = ("applied", "duplicate", "erased_user", "dead_lettered", "deletion", "dropped")


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lag = Gauge(
            "recsys_consumer_lag",
            "Events on the partition the consumer group has not processed yet (the broker's "
            "high watermark minus the group's next offset), per assigned partition.",
            ("topic", "partition"),
            registry=registry,
        )
        self.events = Counter(
            "recsys_consumer_events",
            "Events the consumer finished with, by outcome: applied, duplicate (a redelivery "
            "already applied), erased_user (dropped), dead_lettered, deletion, dropped "
            "(embedded mode: failed, no dead-letter topic).",
            ("topic", "outcome"),
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "recsys_consumer_batch_seconds",
            "Applying one batch of events (all effects), in seconds.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.freshness_seconds = Histogram(
            "recsys_consumer_event_age_seconds",
            "From an event's time to its effects being stored (event-to-feature freshness).",
            buckets=FRESHNESS_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "recsys_consumer_retries",
            "Batches retried because a store the effects need failed (outage) or an event "
            "failed (before dead-lettering).",
            ("reason",),
            registry=registry,
        )
        self.rebalances = Counter(
            "recsys_consumer_rebalances",
            "Partition assignments and revocations of this consumer.",
            ("kind",),
            registry=registry,
        )
        self.assigned = Gauge(
            "recsys_consumer_assigned_partitions",
            "Partitions currently assigned to this consumer.",
            registry=registry,
        )
