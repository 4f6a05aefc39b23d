"""IngestService: validates interaction batches and hands them to the event sink."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import defaultdict
from typing import TYPE_CHECKING

import grpc

from recsys.domain.interactions import Interaction, InteractionKind, validate_interactions
from recsys.errors import RecsysError
from recsys.grpc_server.app import ServiceBinding
from recsys.ports.events import EventSink
from recsys.ports.features import FeatureStore
from recsys.servicers.convert import interaction_from_proto
from recsys.v1 import ingest_service_pb2, ingest_service_pb2_grpc

if TYPE_CHECKING:
    from recsys.composition import Components

logger = logging.getLogger(__name__)

SERVICE_NAME = ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name


class IngestServicer(ingest_service_pb2_grpc.IngestServiceServicer):
    def __init__(
        self, sink: EventSink, *, max_batch_size: int, features: FeatureStore | None = None
    ) -> None:
        self._sink = sink
        self._max_batch_size = max_batch_size
        self._features = features

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
        await self._sink.publish(interactions)
        if self._features is not None:
            await self._update_recent(interactions)
        return ingest_service_pb2.RecordInteractionsResponse(accepted_count=len(interactions))

    async def _update_recent(self, interactions: list[Interaction]) -> None:
        """Realtime user features: the items each user touched, newest first (seed: the last
        30 minutes). Best effort: the events are already safe in the sink."""
        features = self._features
        assert features is not None
        by_user: dict[str, list[Interaction]] = defaultdict(list)
        for event in interactions:
            if event.kind is not InteractionKind.SKIP:
                by_user[event.user_id].append(event)
        try:
            async with asyncio.timeout(0.5):
                await asyncio.gather(
                    *(
                        features.record_recent_interactions(
                            user, [e.item_id for e in sorted(events, key=_event_time)]
                        )
                        for user, events in by_user.items()
                    )
                )
        except (TimeoutError, RecsysError) as error:
            logger.warning("recent interactions not updated", extra={"error": str(error)})


async def build(components: Components) -> list[ServiceBinding]:
    # The process's one event sink: Recommend's erasure reaches what this service buffered.
    servicer = IngestServicer(
        components.event_sink,
        max_batch_size=components.settings.ingest.max_batch_size,
        features=components.feature_store,
    )
    return [
        ServiceBinding(
            SERVICE_NAME,
            lambda server: ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(
                servicer, server
            ),
        )
    ]


def _event_time(event: Interaction) -> dt.datetime:
    return event.event_time or dt.datetime.min.replace(tzinfo=dt.UTC)
