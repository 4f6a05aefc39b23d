"""EventSink on Kafka: interactions and deletion events through the idempotent producer
(`recsys.events.producer`), each call acknowledged by the broker within the caller's remaining
time."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Sequence

from recsys.deadlines import outbound_timeout
from recsys.domain.interactions import Interaction
from recsys.errors import ConfigurationError
from recsys.events.admin import KafkaAdmin
from recsys.events.codec import UserDeletion
from recsys.events.producer import EventProducer
from recsys.ports.events import EventSink
from recsys.settings import KafkaSettings, RecsysSettings

# Kept back from the caller's deadline so that a broker that does not acknowledge in time is
# answered UNAVAILABLE (retryable, nothing acknowledged) rather than DEADLINE_EXCEEDED.
ANSWER_RESERVE_SECONDS = 0.02


class KafkaEventSink(EventSink):
    def __init__(self, settings: KafkaSettings) -> None:
        if not settings.bootstrap_servers:
            raise ConfigurationError(
                "the kafka event sink needs kafka.bootstrap_servers "
                "(RECSYS_KAFKA__BOOTSTRAP_SERVERS)"
            )
        self.settings = settings
        self.producer = EventProducer(settings)
        self.admin = KafkaAdmin(settings)
        self._topics: asyncio.Task[None] | None = None
        # Cap of one call; the request's remaining time caps it further.
        self._cap_seconds = settings.delivery_timeout_ms / 1000

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> KafkaEventSink:
        return cls(settings.kafka)

    async def publish(self, interactions: Sequence[Interaction]) -> None:
        await self.producer.send_interactions(
            interactions,
            timeout_seconds=outbound_timeout(
                self._cap_seconds, reserve_seconds=ANSWER_RESERVE_SECONDS
            ),
        )

    async def publish_user_deletion(self, user_id: str, deletion_event_id: str) -> None:
        deletion = UserDeletion(deletion_event_id, user_id, dt.datetime.now(dt.UTC))
        await self.producer.send_deletion(
            deletion,
            timeout_seconds=outbound_timeout(
                self._cap_seconds, reserve_seconds=ANSWER_RESERVE_SECONDS
            ),
        )

    async def ping(self) -> None:
        await self.admin.describe_cluster()

    async def prepare(self) -> None:
        """Creates missing topics in the background (a broker that is away at startup must
        not keep the process from starting)."""
        if self.settings.create_topics and self._topics is None:
            self._topics = asyncio.create_task(self.admin.ensure_topics_eventually())

    async def close(self) -> None:
        if self._topics is not None:
            self._topics.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._topics
        await self.producer.close()
