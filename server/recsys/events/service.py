"""`recsys serve consume`: a process hosting the consumer worker. It serves no recsys API,
only gRPC health (readiness follows the broker: the seed's describeCluster) and /metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from recsys.errors import ConfigurationError
from recsys.grpc_server.app import ServiceBinding

if TYPE_CHECKING:
    from recsys.composition import Components


async def build(components: Components) -> list[ServiceBinding]:
    from recsys.events.admin import KafkaAdmin
    from recsys.events.consumer import EventConsumer
    from recsys.events.producer import EventProducer

    settings = components.settings
    redis = settings.redis
    if redis.socket_timeout_ms < settings.consumer.store_timeout_ms:
        # Before any adapter exists (built on first use): batches need more than a serving
        # read's timeout. The consume process serves no reads.
        components.settings = settings = settings.model_copy(
            update={
                "redis": redis.model_copy(
                    update={"socket_timeout_ms": settings.consumer.store_timeout_ms}
                )
            }
        )
    if not settings.kafka.bootstrap_servers:
        raise ConfigurationError(
            "`consume` needs kafka.bootstrap_servers (RECSYS_KAFKA__BOOTSTRAP_SERVERS)"
        )
    admin = KafkaAdmin(settings.kafka)
    components.dependencies.register("kafka", admin.describe_cluster, gates_readiness=True)
    if settings.kafka.create_topics:

        async def create_topics() -> None:
            await admin.ensure_topics()

        components.startup_hooks.append(create_topics)
    # Dead letters go through their own idempotent producer.
    dead_letters = EventProducer(settings.kafka)
    components.resources.push_async_callback(dead_letters.close)
    consumer = EventConsumer(
        settings,
        components.event_effects,
        dead_letters=dead_letters,
        metrics=components.consumer_metrics,
    )
    components.consumer = consumer
    components.run_in_background(consumer.run)
    return []
