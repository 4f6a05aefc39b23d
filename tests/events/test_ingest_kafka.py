"""IngestService on a real Kafka-protocol broker: events reach the topic keyed by user id, a
broker that is down is answered UNAVAILABLE within the caller's deadline, and readiness follows
the broker (the seed's describeCluster check)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from confluent_kafka import Consumer

from recsys import services
from recsys.events.codec import decode_interaction
from recsys.grpc_server.app import GrpcApplication
from recsys.v1 import ingest_service_pb2, ingest_service_pb2_grpc, interaction_event_pb2
from tests.conftest import make_settings
from tests.support.health import health_status, wait_for_health
from tests.support.kafka import Broker, kafka_settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def ingest(tmp_path: Path, broker: Broker) -> AsyncIterator[GrpcApplication]:
    settings = make_settings(
        tmp_path,
        ingest={"event_sink": "kafka"},
        health={"dependency_interval_seconds": 0.2, "dependency_failures_before_down": 1},
        **kafka_settings(broker),
    )
    app = await services.build_application(settings, ["ingest"])
    await app.start()
    yield app
    await app.shutdown()


def request(*users: str) -> ingest_service_pb2.RecordInteractionsRequest:
    events = []
    for index, user in enumerate(users):
        event = interaction_event_pb2.InteractionEvent(
            event_id=f"event-{index}", user_id=user, item_id=index,
            type=interaction_event_pb2.INTERACTION_TYPE_CLICK,
        )  # fmt: skip
        event.event_time.FromDatetime(dt.datetime.now(dt.UTC))
        events.append(event)
    return ingest_service_pb2.RecordInteractionsRequest(events=events)


def read_topic(broker: Broker, topic: str, count: int) -> list[tuple[bytes, bytes]]:
    consumer = Consumer(
        {"bootstrap.servers": broker.bootstrap_servers, "group.id": "reader",
         "auto.offset.reset": "earliest", "session.timeout.ms": 6000}
    )  # fmt: skip
    consumer.subscribe([topic])
    found: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + 20
    try:
        while len(found) < count and time.monotonic() < deadline:
            for message in consumer.consume(100, 0.5):
                assert message.error() is None
                found.append((message.key() or b"", message.value() or b""))
    finally:
        consumer.close()
    return found


async def readiness(app: GrpcApplication) -> str:
    return await health_status(app.address)


async def wait_for_readiness(app: GrpcApplication, expected: str, within: float) -> float:
    return await wait_for_health(app.address, expected, within=within)


async def test_recorded_events_are_on_the_topic_keyed_by_user(
    ingest: GrpcApplication, broker: Broker
) -> None:
    async with grpc.aio.insecure_channel(ingest.address) as channel:
        stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        response = await stub.RecordInteractions(request("ann", "bo", "ann"), timeout=5)
    assert response.accepted_count == 3
    topic = ingest.settings.kafka.interactions_topic
    messages = await asyncio.to_thread(read_topic, broker, topic, 3)
    decoded = sorted((key, decode_interaction(value).event_id) for key, value in messages)
    assert decoded == [(b"ann", "event-0"), (b"ann", "event-2"), (b"bo", "event-1")]


async def test_a_broker_outage_is_unavailable_within_the_deadline_and_not_ready(
    ingest: GrpcApplication, broker: Broker
) -> None:
    await wait_for_readiness(ingest, "SERVING", within=5)
    broker.stop()
    async with grpc.aio.insecure_channel(ingest.address) as channel:
        stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.RecordInteractions(request("ann"), timeout=1.0)
        elapsed = time.monotonic() - started
    # Answered by the service (not the deadline): nothing was acknowledged.
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value.details()
    assert "acknowledged 0 of 1" in (raised.value.details() or "")
    assert elapsed < 1.0
    await wait_for_readiness(ingest, "NOT_SERVING", within=5)
    broker.start()
    await wait_for_readiness(ingest, "SERVING", within=10)


async def test_a_broker_outage_takes_ingest_out_not_the_recommend_beside_it(
    tmp_path: Path, broker: Broker
) -> None:
    from tests.support.world import build_world

    app = await build_world(
        tmp_path,
        ingest={"event_sink": "kafka"},
        health={"dependency_interval_seconds": 0.2, "dependency_failures_before_down": 1},
        **kafka_settings(broker),
    )
    ingest, recommend = "recsys.v1.IngestService", "recsys.v1.RecommendService"
    try:
        await wait_for_readiness(app, "SERVING", within=5)
        broker.stop()
        await wait_for_health(app.address, "NOT_SERVING", name=ingest, within=5)
        assert await health_status(app.address, recommend) == "SERVING"
        assert await readiness(app) == "SERVING"
        broker.start()
        await wait_for_health(app.address, "SERVING", name=ingest, within=10)
    finally:
        await app.shutdown()


async def test_an_ingest_process_starts_while_the_broker_is_away(
    tmp_path: Path, broker: Broker
) -> None:
    broker.stop()
    settings = make_settings(
        tmp_path,
        ingest={"event_sink": "kafka"},
        health={"dependency_interval_seconds": 0.2, "dependency_failures_before_down": 1},
        **kafka_settings(broker),
    )
    app = await services.build_application(settings, ["ingest"])
    await app.start()
    try:
        await wait_for_readiness(app, "NOT_SERVING", within=5)
        broker.start()
        await wait_for_readiness(app, "SERVING", within=10)
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
            # The topics are created in the background once the broker answers.
            deadline = time.monotonic() + 15
            accepted, codes = 0, []
            while not accepted and time.monotonic() < deadline:
                try:
                    accepted = (
                        await stub.RecordInteractions(request("ann"), timeout=3)
                    ).accepted_count
                except grpc.aio.AioRpcError as error:
                    codes.append(error.code())
        assert accepted == 1, codes
        assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}
    finally:
        await app.shutdown()
