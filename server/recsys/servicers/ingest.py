"""IngestService: validates interaction batches and hands them to the event sink."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from recsys.domain.interactions import validate_interactions
from recsys.grpc_server.app import ServiceBinding
from recsys.ports.events import EventSink
from recsys.registry import create_adapter
from recsys.servicers.convert import interaction_from_proto
from recsys.v1 import ingest_service_pb2, ingest_service_pb2_grpc

if TYPE_CHECKING:
    from recsys.services import ServiceContext

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
        interactions = [interaction_from_proto(event) for event in request.events]
        validate_interactions(interactions, max_batch_size=self._max_batch_size)
        await self._sink.publish(interactions)
        return ingest_service_pb2.RecordInteractionsResponse(accepted_count=len(interactions))


async def build(context: ServiceContext) -> list[ServiceBinding]:
    settings = context.settings
    sink: EventSink = create_adapter("event_sink", settings.ingest.event_sink, settings)
    context.resources.push_async_callback(sink.close)
    servicer = IngestServicer(sink, max_batch_size=settings.ingest.max_batch_size)
    return [
        ServiceBinding(
            SERVICE_NAME,
            lambda server: ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(
                servicer, server
            ),
        )
    ]
