"""The embedded mode's consumer: drains the in-memory event sink and applies the same effects
as the Kafka consumer group (`recsys.domain.ingestion`), so the embedded platform has the whole
write path without a broker. Events are applied in order; while a store is down the drained
batch is kept and retried, so an outage loses nothing that was drained."""

from __future__ import annotations

import asyncio
import logging

from recsys.adapters.events.in_memory import InMemoryEventSink
from recsys.domain.ingestion import InteractionEffects
from recsys.domain.interactions import Interaction
from recsys.errors import RecsysError
from recsys.observability.events import ConsumerMetrics

logger = logging.getLogger(__name__)

TOPIC = "in_memory"


class InProcessConsumer:
    def __init__(
        self,
        sink: InMemoryEventSink,
        effects: InteractionEffects,
        *,
        interval_seconds: float,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self.sink = sink
        self.effects = effects
        self.interval_seconds = interval_seconds
        self.metrics = metrics
        self._pending: list[Interaction] = []

    async def run(self) -> None:
        while True:
            await self.drain_once()
            if self.metrics is not None:
                # The embedded mode's lag: events recorded and not applied yet.
                self.metrics.lag.labels(TOPIC, "0").set(self.sink.pending() + len(self._pending))
            await asyncio.sleep(self.interval_seconds)

    async def drain_once(self) -> int:
        """Applies what the sink holds; returns how many events were applied."""
        self._pending.extend(await self.sink.drain())
        if not self._pending:
            return 0
        try:
            applied = await self.effects.apply(self._pending)
        except RecsysError as error:
            logger.warning(
                "in-process consumer: effects failed; retrying",
                extra={"error": str(error), "events": len(self._pending)},
            )
            return 0
        count = len(self._pending)
        self._pending = []
        if self.metrics is not None:
            self.metrics.events.labels(TOPIC, "applied").inc(applied.new)
            self.metrics.events.labels(TOPIC, "erased_user").inc(applied.erased_users)
        return count
