"""`recsys serve consume`: a process hosting the consumer worker. It serves no recsys API,
only gRPC health (readiness follows the broker: the seed's describeCluster) and /metrics."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from recsys.errors import ConfigurationError
from recsys.grpc_server.app import ServiceBinding

if TYPE_CHECKING:
    from recsys.composition import Components


logger = logging.getLogger(__name__)


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
    components.dependencies.register("kafka", admin.describe_cluster, gates=())
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

    async def run() -> None:
        if settings.kafka.create_topics:
            # Before subscribing (a topic created later is seen only at the next metadata
            # refresh), in the background: a broker away at startup must not keep the process
            # from starting; it is not ready until the broker answers.
            await admin.ensure_topics_eventually()
        try:
            await consumer.run()
        except Exception as error:
            # Nothing else consumes in this process: stop it (exit 1) so that its supervisor
            # restarts it, rather than stay up and ready with no consumer.
            logger.critical("the event consumer died", exc_info=True)
            components.fail(f"the event consumer died: {type(error).__name__}: {error}")

    components.run_in_background(run)
    return []
