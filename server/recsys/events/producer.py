"""The idempotent Kafka producer of the write path (and the library producer for services that
publish interactions themselves): `acks=all`, `enable.idempotence`, every call awaits the
broker's acknowledgement of each of its messages within the caller's time, and a message not
acknowledged in time is reported (UNAVAILABLE), never dropped in silence."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from recsys.domain.interactions import Interaction
from recsys.errors import Unavailable
from recsys.events.codec import UserDeletion, encode_deletion, encode_interaction, key_of
from recsys.settings import KafkaSettings

logger = logging.getLogger(__name__)

CLIENT_LOGGER = logging.getLogger("recsys.kafka.client")

Headers = list[tuple[str, str | bytes | None]]


def producer_config(settings: KafkaSettings) -> dict[str, Any]:
    if not settings.bootstrap_servers:
        raise ValueError("kafka.bootstrap_servers is not set")
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.client_id,
        # Exactly one copy per produce call on the broker, in order per partition, even when
        # the client retries; needs acks=all.
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": settings.linger_ms,
        "message.timeout.ms": settings.delivery_timeout_ms,
        "socket.connection.setup.timeout.ms": settings.request_timeout_ms,
        # The client's own log lines go to Python logging (JSON logs), not to stderr.
        "logger": CLIENT_LOGGER,
    }


class EventProducer:
    """One per process. A background thread serves the client's delivery reports, so awaiting
    an acknowledgement never blocks the event loop."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._producer = Producer(producer_config(settings))
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-producer-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)

    async def send(
        self,
        topic: str,
        messages: Sequence[tuple[bytes | None, bytes | None]],
        *,
        timeout_seconds: float,
        headers: Headers | None = None,
    ) -> None:
        """Produces (key, value) messages and returns once the broker acknowledged every one;
        Unavailable when one is refused or not acknowledged within `timeout_seconds`. Some may
        still have been written then: callers retry the whole batch and consumers deduplicate
        on event id (at-least-once)."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[KafkaError | None]] = []

        def report(future: asyncio.Future[KafkaError | None]) -> Any:
            def delivered(error: KafkaError | None, _message: Message) -> None:
                loop.call_soon_threadsafe(_settle, future, error)

            return delivered

        for key, value in messages:
            future: asyncio.Future[KafkaError | None] = loop.create_future()
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=report(future)
                )
            except BufferError as error:
                raise Unavailable(
                    "the event producer's queue is full; retry later",
                    reason="EVENT_QUEUE_FULL",
                ) from error
            except KafkaException as error:
                if error.args[0].fatal():
                    self._replace_client()
                raise Unavailable(
                    f"the event producer refused an event: {error.args[0]}",
                    reason="EVENT_BROKER_UNAVAILABLE",
                ) from error
            futures.append(future)
        try:
            async with asyncio.timeout(max(timeout_seconds, 0.0)):
                errors = await asyncio.gather(*futures)
        except TimeoutError as error:
            # Timing out cancelled the futures still waiting.
            acknowledged = sum(
                1
                for future in futures
                if future.done() and not future.cancelled() and future.result() is None
            )
            raise Unavailable(
                f"the event broker acknowledged {acknowledged} of {len(futures)} events within "
                f"{timeout_seconds:.3f} s; retry (events are deduplicated by event_id)",
                reason="EVENT_BROKER_UNAVAILABLE",
            ) from error
        failed = [error for error in errors if error is not None]
        if any(error.fatal() for error in failed):
            self._replace_client()
        if failed:
            raise Unavailable(
                f"the event broker did not take {len(failed)} of {len(futures)} events: "
                f"{failed[0].str()}",
                reason="EVENT_BROKER_UNAVAILABLE",
            )

    def _replace_client(self) -> None:
        """An idempotent producer's fatal error (a broker that forgot its producer id, say)
        fails every later call: start a new client; the failed calls' callers retry."""
        logger.error("event producer hit a fatal error; replacing its client")
        old, self._producer = self._producer, Producer(producer_config(self.settings))
        old.purge()

    async def send_interactions(
        self, events: Sequence[Interaction], *, timeout_seconds: float
    ) -> None:
        await self.send(
            self.settings.interactions_topic,
            [(key_of(event.user_id), encode_interaction(event)) for event in events],
            timeout_seconds=timeout_seconds,
        )

    async def send_deletion(self, deletion: UserDeletion, *, timeout_seconds: float) -> None:
        await self.send(
            self.settings.deletions_topic,
            [(key_of(deletion.user_id), encode_deletion(deletion))],
            timeout_seconds=timeout_seconds,
        )

    async def close(self, timeout_seconds: float = 5.0) -> None:
        """Waits up to `timeout_seconds` for what is in flight, then stops."""
        remaining = await asyncio.to_thread(self._producer.flush, timeout_seconds)
        if remaining:
            logger.warning(
                "event producer closed with unacknowledged events", extra={"events": remaining}
            )
        self._closed.set()
        await asyncio.to_thread(self._poller.join)
        # Stops the client's threads (and its reconnect attempts) now, not at collection.
        await asyncio.to_thread(self._producer.close)


def _settle(future: asyncio.Future[KafkaError | None], error: KafkaError | None) -> None:
    if not future.done():
        future.set_result(error)
