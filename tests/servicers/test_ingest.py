"""IngestService over gRPC with the in-memory event sink."""

from __future__ import annotations

import contextlib

import pytest
from google.protobuf import timestamp_pb2

from recsys.adapters.events.in_memory import InMemoryEventSink
from recsys.domain.interactions import InteractionKind
from recsys.grpc_server.app import GrpcApplication, ServiceBinding
from recsys.servicers.ingest import SERVICE_NAME, IngestServicer
from recsys.v1 import ingest_service_pb2_grpc, interaction_event_pb2
from recsys_client import AsyncRecsysClient, ClientOptions, RecsysClientError
from tests.conftest import StartApp


def event(index: int, **changes: object) -> interaction_event_pb2.InteractionEvent:
    fields: dict[str, object] = {
        "event_id": f"event-{index}",
        "user_id": "user_1",
        "item_id": 100 + index,
        "type": interaction_event_pb2.INTERACTION_TYPE_CLICK,
        "value": 1.0,
        "event_time": timestamp_pb2.Timestamp(seconds=1_700_000_000 + index),
        "surface": "homepage",
    }
    fields.update(changes)
    return interaction_event_pb2.InteractionEvent(**fields)


@pytest.fixture
async def sink_and_client(
    start_app: StartApp,
) -> tuple[InMemoryEventSink, AsyncRecsysClient]:
    sink = InMemoryEventSink(capacity=100)
    servicer = IngestServicer(sink, max_batch_size=10)
    binding = ServiceBinding(
        SERVICE_NAME,
        lambda server: ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(
            servicer, server
        ),
    )
    app: GrpcApplication = await start_app([binding])
    async with AsyncRecsysClient(ClientOptions(target=app.address, timeout_seconds=5)) as client:
        yield sink, client


async def test_a_valid_batch_reaches_the_sink(
    sink_and_client: tuple[InMemoryEventSink, AsyncRecsysClient],
) -> None:
    sink, client = sink_and_client
    response = await client.record_interactions([event(1), event(2)])
    assert response.accepted_count == 2
    recorded = await sink.drain()
    assert [(r.event_id, r.item_id, r.kind) for r in recorded] == [
        ("event-1", 101, InteractionKind.CLICK),
        ("event-2", 102, InteractionKind.CLICK),
    ]
    assert recorded[0].event_time is not None
    assert recorded[0].event_time.timestamp() == 1_700_000_001


async def test_an_invalid_batch_records_nothing_and_names_every_field(
    sink_and_client: tuple[InMemoryEventSink, AsyncRecsysClient],
) -> None:
    sink, client = sink_and_client
    bad = [
        event(1),
        event(2, user_id="bad user!"),
        event(3, type=interaction_event_pb2.INTERACTION_TYPE_UNSPECIFIED, item_id=-5),
        event(4, value=float("nan")),
        event(1),  # repeated event id
    ]
    bad[3].ClearField("event_time")
    with pytest.raises(RecsysClientError) as caught:
        await client.record_interactions(bad)
    error = caught.value
    assert error.code.name == "INVALID_ARGUMENT"
    assert [violation.field for violation in error.field_violations] == [
        "events[1].user_id",
        "events[2].item_id",
        "events[2].type",
        "events[3].value",
        "events[3].event_time",
        "events[4].event_id",
    ]
    assert await sink.drain() == []


async def test_batch_size_bounds(
    sink_and_client: tuple[InMemoryEventSink, AsyncRecsysClient],
) -> None:
    sink, client = sink_and_client
    for events in ([], [event(index) for index in range(11)]):
        with pytest.raises(RecsysClientError) as caught:
            await client.record_interactions(events)
        assert [v.field for v in caught.value.field_violations] == ["events"]
    assert await sink.drain() == []


async def test_in_memory_sink_is_bounded_and_counts_drops() -> None:
    from recsys.domain.interactions import Interaction

    sink = InMemoryEventSink(capacity=3)
    events = [Interaction(f"e{i}", "u", i, InteractionKind.VIEW, 0.0, None) for i in range(5)]
    await sink.publish(events)
    assert sink.dropped == 2
    assert [e.event_id for e in await sink.drain()] == ["e2", "e3", "e4"]
    with contextlib.suppress(Exception):
        await sink.close()
