"""IngestService: validates interaction batches and hands them to the event sink.

The answer means the events are durably handed over (with Kafka: acknowledged by the broker,
acks=all); their effects (SQL rows, real-time features, counters, cache invalidation) are the
consumers' (`recsys serve consume`; in the embedded mode an in-process consumer draining the
in-memory sink)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from recsys.domain.interactions import validate_interactions
from recsys.grpc_server.app import ServiceBinding
from recsys.ports.events import EventSink
from recsys.servicers.convert import interaction_from_proto
from recsys.v1 import ingest_service_pb2, ingest_service_pb2_grpc

if TYPE_CHECKING:
    from recsys.composition import Components

SERVICE_NAME = ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name


class IngestServicer(ingest_service_pb2_grpc.IngestServiceServicer):
    def __init__(self, sink: EventSink, *, max_batch_size: int) -> None:
        self._sink = sink
        self._max_batch_size = max_batch_size

    async def RecordInteractions(  # noqa: N802 - the generated servicer's method name
        self,
        request: ingest_service_pb2.RecordInteractionsRequest,
        context: grpc.aio.ServicerContext,
    ) -> ingest_service_pb2.RecordInteractionsResponse:
        interactions = [
            interaction_from_proto(event, field=f"events[{index}]")
            for index, event in enumerate(request.events)
        ]
        validate_interactions(interactions, max_batch_size=self._max_batch_size)
        # Raises Unavailable when the sink cannot take every event within the deadline.
        await self._sink.publish(interactions)
        return ingest_service_pb2.RecordInteractionsResponse(accepted_count=len(interactions))


async def build(components: Components) -> list[ServiceBinding]:
    from recsys.adapters.events.in_memory import InMemoryEventSink

    # The process's one event sink: Recommend's erasure reaches what this service buffered.
    sink = components.event_sink
    if isinstance(sink, InMemoryEventSink):
        from recsys.events.in_process import InProcessConsumer

        consumer = InProcessConsumer(
            sink,
            components.event_effects,
            interval_seconds=components.settings.consumer.embedded_drain_interval_ms / 1000,
            metrics=components.consumer_metrics,
        )
        components.run_in_background(consumer.run)
    else:
        # Nothing to take events with while the broker is away: IngestService is not ready
        # (a RecommendService in the same process still is).
        components.dependencies.register("kafka", sink.ping, gates=(SERVICE_NAME,))
    servicer = IngestServicer(sink, max_batch_size=components.settings.ingest.max_batch_size)
    return [
        ServiceBinding(
            SERVICE_NAME,
            lambda server: ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(
                servicer, server
            ),
        )
    ]
