"""The embedded mode's consumer: drains the in-memory event sink and applies the same effects
as the Kafka consumer group (`recsys.domain.ingestion`), so the embedded platform has the whole
write path without a broker. Events are applied in order; while a store is down the drained
batch is kept and retried, so an outage loses nothing that was drained."""

from __future__ import annotations

import asyncio
import logging

from recsys.adapters.events.in_memory import InMemoryEventSink
from recsys.domain.ingestion import AppliedEvents, InteractionEffects
from recsys.domain.interactions import Interaction
from recsys.errors import DeadlineExceeded, Unavailable
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
        """Applies what the sink holds; returns how many events were applied. While a store is
        down the drained batch is kept and nothing more is drained (the sink's bound applies
        to the backlog); an event failing for another reason is logged and dropped (the
        embedded mode has no dead-letter topic)."""
        if not self._pending:
            self._pending = await self.sink.drain()
        if not self._pending:
            return 0
        try:
            applied = await self.effects.apply(self._pending)
        except (Unavailable, DeadlineExceeded) as outage:
            logger.warning(
                "in-process consumer: a store is down; retrying",
                extra={"error": str(outage), "events": len(self._pending)},
            )
            return 0
        except Exception:
            return await self._one_by_one()
        count = len(self._pending)
        self._pending = []
        self._count(applied)
        return count

    async def _one_by_one(self) -> int:
        applied_count = 0
        for position, event in enumerate(self._pending):
            try:
                self._count(await self.effects.apply([event]))
                applied_count += 1
            except (Unavailable, DeadlineExceeded):
                # An outage after all: keep the rest for the next round.
                self._pending = self._pending[position:]
                return applied_count
            except Exception as error:
                logger.error(
                    "in-process consumer: event dropped",
                    extra={"event_id": event.event_id, "error": f"{type(error).__name__}: {error}"},
                )
                if self.metrics is not None:
                    self.metrics.events.labels(TOPIC, "dropped").inc()
        self._pending = []
        return applied_count

    def _count(self, applied: AppliedEvents) -> None:
        if self.metrics is not None:
            self.metrics.events.labels(TOPIC, "applied").inc(applied.new)
            self.metrics.events.labels(TOPIC, "erased_user").inc(applied.erased_users)
