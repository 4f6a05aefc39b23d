"""EventSink: where recorded interactions go (the interactions topic in distributed mode)."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from recsys.domain.interactions import Interaction


class EventSink(abc.ABC):
    """Accepts interaction events for downstream consumers.

    `publish` returns once every event is durably handed over (for Kafka: acknowledged by the
    broker), or raises a RecsysError (UNAVAILABLE when the sink cannot take them now).
    Delivery is at-least-once; consumers deduplicate on `event_id`.
    """

    @abc.abstractmethod
    async def publish(self, interactions: Sequence[Interaction]) -> None: ...

    @abc.abstractmethod
    async def publish_user_deletion(self, user_id: str, deletion_event_id: str) -> None:
        """Tells downstream stores (warehouse, caches of other regions) to erase a user."""

    async def ping(self) -> None:
        """A cheap read of the broker behind the sink; raises when it cannot answer (the
        readiness probe of processes that write events). Nothing to check in process."""
        return None

    async def prepare(self) -> None:
        """Runs once at startup (creates the topics where allowed)."""
        return None

    async def close(self) -> None:
        """Flushes and releases resources; the sink is unusable afterwards."""
        return None
