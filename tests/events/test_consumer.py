"""The consumer worker on a real broker, Redis and PostgreSQL: an event recorded through
IngestService reaches the user's recent interactions and invalidates their cached answer (the
next Recommend excludes the item); poison goes to the dead-letter topic with its headers while
the partition keeps flowing; a deletion event erases what the consumer owns; readiness follows
the broker."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from confluent_kafka import Consumer, Producer

from recsys import services
from recsys.domain.interactions import Interaction, InteractionKind
from recsys.events.codec import UserDeletion, encode_deletion, encode_interaction
from recsys.events.consumer import (
    ATTEMPTS_HEADER,
    ERROR_HEADER,
    OFFSET_HEADER,
    PARTITION_HEADER,
    TOPIC_HEADER,
)
from recsys.grpc_server.app import GrpcApplication
from recsys.ports.cache import RESPONSES
from recsys.v1 import interaction_event_pb2
from recsys_client import AsyncRecsysClient, ClientOptions
from tests.support.health import wait_for_health
from tests.support.kafka import Broker, kafka_settings
from tests.support.world import SharedStores, world_on_shared_stores

pytestmark = pytest.mark.integration

T = TypeVar("T")


@dataclass
class Platform:
    stores: SharedStores
    consume: GrpcApplication
    broker: Broker

    @property
    def app(self) -> GrpcApplication:
        return self.stores.app


@pytest.fixture
async def platform(tmp_path: Path, broker: Broker) -> AsyncIterator[Platform]:
    async with world_on_shared_stores(
        tmp_path,
        features={"store": "redis"},
        recommend={"cache": "redis"},
        realtime={"counters": "redis"},
        ingest={"event_sink": "kafka"},
        # A first read of the candidates' features on a loaded machine: not what is tested.
        rank={"feature_timeout_ms": 1000},
        health={"dependency_interval_seconds": 0.2, "dependency_failures_before_down": 1},
        **kafka_settings(broker),
    ) as stores:  # fmt: skip
        consume = await services.build_application(stores.app.settings, ["consume"])
        await consume.start()
        try:
            yield Platform(stores, consume, broker)
        finally:
            await consume.shutdown()


async def eventually(check: Callable[[], Awaitable[T | None]], *, within: float = 20.0) -> T:
    started = time.monotonic()
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() - started < within, "condition not met in time"
        await asyncio.sleep(0.05)


def click(event_id: str, user: str, item: int) -> interaction_event_pb2.InteractionEvent:
    event = interaction_event_pb2.InteractionEvent(
        event_id=event_id, user_id=user, item_id=item,
        type=interaction_event_pb2.INTERACTION_TYPE_CLICK,
    )  # fmt: skip
    event.event_time.FromDatetime(dt.datetime.now(dt.UTC))
    return event


def produce(broker: Broker, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "acks": "all"})
    for key, value in messages:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(10) == 0


async def test_an_ingested_click_is_excluded_from_the_next_answer(platform: Platform) -> None:
    components = platform.app.components
    async with AsyncRecsysClient(
        ClientOptions(target=platform.app.address, timeout_seconds=10, retry=None)
    ) as client:
        # Until an undegraded answer is cached (a degraded one is not).
        for _ in range(5):
            first = await client.recommend("alice", surface="homepage", limit=10)
            if await components.recommendation_cache.get(RESPONSES, "alice", "homepage"):
                break
        else:
            raise AssertionError(f"no answer was cached: {first.degradation}")
        clicked = first.items[0].item_id
        response = await client.record_interactions([click("e2e-1", "alice", clicked)])
        assert response.accepted_count == 1

        async def applied() -> bool:
            features = await components.feature_store.get_user_features("alice")
            # The cached answer that held the item is invalidated (the last effect).
            cached = await components.recommendation_cache.get(RESPONSES, "alice", "homepage")
            return clicked in features.recent_item_ids and cached is None

        await eventually(applied)
        second = await client.recommend("alice", surface="homepage", limit=10)
    assert not second.degradation.served_from_cache
    assert clicked not in [item.item_id for item in second.items]
    assert clicked in await components.metadata.consumed_item_ids("alice")


async def test_poison_is_dead_lettered_and_the_partition_keeps_flowing(
    platform: Platform,
) -> None:
    kafka = platform.app.settings.kafka
    now = dt.datetime.now(dt.UTC)
    user = f"poison-{uuid.uuid4().hex[:6]}"
    good = [Interaction(f"p-{i}", user, 100 + i, InteractionKind.VIEW, 0.0, now) for i in (1, 2)]
    key = user.encode()
    # One key: one partition, in this order.
    await asyncio.to_thread(
        produce, platform.broker, kafka.interactions_topic,
        [(key, encode_interaction(good[0])), (key, b"\x08\xff not a protobuf"),
         (key, encode_interaction(good[1]))],
    )  # fmt: skip
    metadata = platform.app.components.metadata

    async def both_applied() -> set[int] | None:
        consumed = await metadata.consumed_item_ids(user)
        return consumed if consumed == {101, 102} else None

    await eventually(both_applied)
    dead = await asyncio.to_thread(read_one, platform.broker, kafka.dead_letter_topic)
    assert dead.key() == key
    assert dead.value() == b"\x08\xff not a protobuf"
    headers = {name: value for name, value in dead.headers() or []}
    assert headers[TOPIC_HEADER] == kafka.interactions_topic.encode()
    assert headers[ATTEMPTS_HEADER] == b"1"
    assert b"not an InteractionEvent" in (headers[ERROR_HEADER] or b"")
    assert int(headers[PARTITION_HEADER] or b"-1") >= 0
    assert int(headers[OFFSET_HEADER] or b"-1") >= 1


def read_one(broker: Broker, topic: str):  # type: ignore[no-untyped-def]
    consumer = Consumer(
        {"bootstrap.servers": broker.bootstrap_servers, "group.id": f"dlq-{uuid.uuid4().hex}",
         "auto.offset.reset": "earliest", "session.timeout.ms": 6000}
    )  # fmt: skip
    consumer.subscribe([topic])
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                return message
    finally:
        consumer.close()
    raise AssertionError(f"nothing on {topic}")


async def test_a_deletion_event_erases_what_the_consumer_owns(platform: Platform) -> None:
    components = platform.app.components
    user = f"erased-{uuid.uuid4().hex[:6]}"
    async with AsyncRecsysClient(
        ClientOptions(target=platform.app.address, timeout_seconds=10, retry=None)
    ) as client:
        await client.record_interactions([click(f"{user}-1", user, 7), click(f"{user}-2", user, 8)])

    async def recorded() -> bool:
        features = await components.feature_store.get_user_features(user)
        return set(features.recent_item_ids) == {7, 8}

    await eventually(recorded)
    assert (await components.metadata.count_rows_for_user(user))["interactions"] == 2
    deletion = UserDeletion(f"erase-{user}", user, dt.datetime.now(dt.UTC))
    await asyncio.to_thread(
        produce, platform.broker, platform.app.settings.kafka.deletions_topic,
        [(user.encode(), encode_deletion(deletion))],
    )  # fmt: skip

    async def erased() -> bool:
        rows = await components.metadata.count_rows_for_user(user)
        features = await components.feature_store.get_user_features(user)
        return rows["interactions"] == 0 and not features.recent_item_ids

    await eventually(erased)
    assert await components.metadata.erased_user_ids([user]) == {user}


async def test_consumer_readiness_follows_the_broker(platform: Platform) -> None:
    address = platform.consume.address
    await wait_for_health(address, "SERVING", within=5)
    platform.broker.stop()
    await wait_for_health(address, "NOT_SERVING", within=5)
    platform.broker.start()
    await wait_for_health(address, "SERVING", within=10)
