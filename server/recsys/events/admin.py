"""Topic administration and the broker probe (seed "Health Check Endpoints": Kafka
describeCluster), on confluent-kafka's AdminClient, off the event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from recsys.errors import Unavailable
from recsys.events.producer import CLIENT_LOGGER
from recsys.settings import KafkaSettings

logger = logging.getLogger(__name__)


class KafkaAdmin:
    def __init__(self, settings: KafkaSettings) -> None:
        if not settings.bootstrap_servers:
            raise ValueError("kafka.bootstrap_servers is not set")
        self.settings = settings
        config: dict[str, Any] = {
            "bootstrap.servers": settings.bootstrap_servers,
            "client.id": f"{settings.client_id}-admin",
            "socket.connection.setup.timeout.ms": settings.request_timeout_ms,
            "logger": CLIENT_LOGGER,
        }
        self._client = AdminClient(config)

    @property
    def topics(self) -> tuple[str, str, str]:
        settings = self.settings
        return (settings.interactions_topic, settings.deletions_topic, settings.dead_letter_topic)

    async def describe_cluster(self) -> str:
        """The cluster id; Unavailable when the cluster does not answer in time."""
        timeout = self.settings.request_timeout_ms / 1000

        def describe() -> str:
            result = self._client.describe_cluster(request_timeout=timeout).result(timeout)
            return str(result.cluster_id)

        try:
            return await asyncio.to_thread(describe)
        except (KafkaException, TimeoutError, Exception) as error:
            raise Unavailable(
                f"the Kafka cluster did not answer: {error}", reason="EVENT_BROKER_UNAVAILABLE"
            ) from error

    async def ensure_topics(self) -> list[str]:
        """Creates the platform's topics that do not exist; returns those it created."""
        timeout = self.settings.request_timeout_ms / 1000

        def create() -> list[str]:
            existing = set(self._client.list_topics(timeout=timeout).topics)
            missing = [topic for topic in self.topics if topic not in existing]
            if not missing:
                return []
            futures = self._client.create_topics(
                [
                    NewTopic(
                        topic,
                        num_partitions=self.settings.partitions,
                        replication_factor=self.settings.replication_factor,
                    )
                    for topic in missing
                ],
                request_timeout=timeout,
            )
            created = []
            for topic, future in futures.items():
                try:
                    future.result(timeout)
                    created.append(topic)
                except KafkaException as error:
                    kafka_error = error.args[0]
                    # Another process created it first.
                    if kafka_error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise
            return created

        try:
            created = await asyncio.to_thread(create)
        except (KafkaException, TimeoutError, concurrent.futures.TimeoutError) as error:
            raise Unavailable(
                f"cannot create the event topics: {error}", reason="EVENT_BROKER_UNAVAILABLE"
            ) from error
        if created:
            logger.info("kafka topics created", extra={"topics": created})
        return created

    async def ensure_topics_eventually(self, retry_seconds: float = 5.0) -> None:
        """`ensure_topics` until it succeeds: a process started while the broker is away starts
        anyway (not ready: readiness follows the broker) and creates the topics once it is
        back."""
        while True:
            try:
                await self.ensure_topics()
                return
            except Unavailable as error:
                logger.warning(
                    "kafka topics not checked yet; retrying",
                    extra={"error": str(error), "retry_in_seconds": retry_seconds},
                )
            await asyncio.sleep(retry_seconds)
