"""The one registry of adapters, by port and short name.

Entries are dotted paths imported on first use, so an adapter's heavy dependencies (FAISS,
tritonclient, confluent-kafka) load only in processes configured to use it, and importing this
module has no side effects. Every adapter class offers `from_settings(settings)`.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, TypeVar, cast

from recsys.errors import ConfigurationError
from recsys.settings import RecsysSettings

ADAPTERS: dict[str, dict[str, str]] = {
    "event_sink": {
        "in_memory": "recsys.adapters.events.in_memory:InMemoryEventSink",
        "kafka": "recsys.adapters.events.kafka:KafkaEventSink",
    },
    "feature_store": {
        "in_memory": "recsys.adapters.features.in_memory:InMemoryFeatureStore",
        "redis": "recsys.adapters.redis.features:RedisFeatureStore",
    },
    "recommendation_cache": {
        "in_memory": "recsys.adapters.cache.in_memory:InMemoryRecommendationCache",
        "redis": "recsys.adapters.cache.redis:RedisRecommendationCache",
    },
    "item_counters": {
        "in_memory": "recsys.adapters.counters.in_memory:InMemoryItemCounters",
        "redis": "recsys.adapters.redis.counters:RedisItemCounters",
    },
    "metadata": {
        "sql": "recsys.adapters.sql.metadata:SqlMetadataRepository",
    },
    "rate_limiter": {
        "in_memory": "recsys.adapters.rate_limit.in_memory:InMemoryRateLimiter",
        "redis": "recsys.adapters.rate_limit.redis:RedisRateLimiter",
    },
    "ranker": {
        "onnx": "recsys.adapters.rankers.onnx:OnnxRanker",
        "triton": "recsys.adapters.rankers.triton:TritonRanker",
        "rule": "recsys.adapters.rankers.rule:RuleRanker",
        "tiered": "recsys.adapters.rankers.tiered:TieredRanker",
    },
    "snapshot_store": {
        "local": "recsys.adapters.snapshots.local:LocalSnapshotStore",
    },
}

T_co = TypeVar("T_co", covariant=True)


class _FromSettings(Protocol[T_co]):
    def from_settings(self, settings: RecsysSettings) -> T_co: ...


def adapter_names(port: str) -> list[str]:
    """Short names registered for a port."""
    return sorted(ADAPTERS.get(port, {}))


def resolve_adapter(port: str, name: str) -> type[Any]:
    """The adapter class for a port and short name; ConfigurationError when unknown."""
    choices = ADAPTERS.get(port)
    if choices is None:
        raise ConfigurationError(f"unknown port {port!r}; known: {', '.join(sorted(ADAPTERS))}")
    target = choices.get(name)
    if target is None:
        raise ConfigurationError(
            f"unknown {port} adapter {name!r}; choose one of {', '.join(sorted(choices))}"
        )
    module_name, _, attribute = target.partition(":")
    return cast(type[Any], getattr(importlib.import_module(module_name), attribute))


def create_adapter(port: str, name: str, settings: RecsysSettings) -> Any:
    """Builds the configured adapter of a port from the settings."""
    adapter_class = cast(_FromSettings[Any], resolve_adapter(port, name))
    return adapter_class.from_settings(settings)
