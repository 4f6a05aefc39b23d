"""What retrieval, ranking and the circuit breakers report, as small protocols with null
objects; the Prometheus implementations live in `recsys.observability.metrics`, so the domain
imports no metrics library."""

from __future__ import annotations

from typing import Protocol


class RetrievalObserver(Protocol):
    def shard_searched(self, shard_id: int, seconds: float) -> None: ...

    def shard_failed(self, shard_id: int, reason: str) -> None: ...

    def sanity_retry(self, shard_id: int) -> None: ...

    def partial_result(self) -> None: ...


class RankingObserver(Protocol):
    def scored(self, backend: str, seconds: float) -> None: ...

    def model_called(self, model: str) -> None:
        """A call to a model backend ("primary" or "cpu_model"), whatever its outcome."""

    def model_error(self, kind: str) -> None: ...

    def features_read(self, seconds: float) -> None:
        """The candidates' features were read from the store (or the read gave up)."""

    def default_features_used(self) -> None: ...


class BreakerObserver(Protocol):
    def track(self, breaker: str) -> None:
        """A new breaker (closed): its state is reported from the start, not from its first
        transition."""

    def record(self, breaker: str, to_state: str) -> None: ...


class NullObserver:
    """Reports nothing; stands in for every observer above."""

    def shard_searched(self, shard_id: int, seconds: float) -> None:
        return None

    def shard_failed(self, shard_id: int, reason: str) -> None:
        return None

    def sanity_retry(self, shard_id: int) -> None:
        return None

    def partial_result(self) -> None:
        return None

    def scored(self, backend: str, seconds: float) -> None:
        return None

    def model_called(self, model: str) -> None:
        return None

    def model_error(self, kind: str) -> None:
        return None

    def features_read(self, seconds: float) -> None:
        return None

    def default_features_used(self) -> None:
        return None

    def track(self, breaker: str) -> None:
        return None

    def record(self, breaker: str, to_state: str) -> None:
        return None
