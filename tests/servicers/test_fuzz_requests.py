"""Fuzzing every public method over gRPC: no request, however malformed, answers UNKNOWN or
INTERNAL, and the servers log no ERROR while answering them.

One embedded world (Recommend, Rank, Ingest, Retrieve) and a `recsys serve shard` process for
shard 0 of its snapshots (IndexShardService) get, per method, a seeded mix of structurally valid
messages with random (often hostile) field values, those messages serialized and then garbled
or cut, and random bytes. Calls go out raw (identity serializers), 50 at a time. A failure
prints the method and the request bytes (hex) of the first offending calls.
"""

from __future__ import annotations

import asyncio
import logging
import random
import string
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from recsys.grpc_server.app import GrpcApplication
from recsys.v1 import common_pb2
from recsys.v1 import index_shard_service_pb2 as shard_pb2
from recsys.v1 import ingest_service_pb2 as ingest_pb2
from recsys.v1 import interaction_event_pb2 as event_pb2
from recsys.v1 import rank_service_pb2 as rank_pb2
from recsys.v1 import recommend_service_pb2 as recommend_pb2
from recsys.v1 import retrieve_service_pb2 as retrieve_pb2
from tests.support.world import (
    CATEGORIES,
    DIMENSION,
    ITEMS,
    build_world,
    start_shard_of_world,
)

pytestmark = pytest.mark.e2e

SEED = 20_260_101
CALLS_PER_METHOD = 1_050  # 10 methods: 10,500 calls
CHUNK = 50
FORBIDDEN = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNIMPLEMENTED,
}
# An error status too large for the caller's metadata limit: the call fails with
# RESOURCE_EXHAUSTED on the client's side instead of carrying the status.
CLIENT_LIMIT = "received metadata size exceeds"
USERS = ["alice", "kid", "bob", "stale", "nobody"]
SURFACES = ["homepage", "item_page", "search", "cart", "email"]


class Values:
    """Random field values: each is hostile with the probability `hostility`, which changes
    from request to request, so that some requests get past validation and some do not."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.hostility = 0.1

    def chance(self, probability: float) -> bool:
        return self.rng.random() < probability

    def sane(self) -> bool:
        return not self.chance(self.hostility)

    def text(self) -> str:
        rng = self.rng
        kind = rng.randrange(7)
        if kind == 0:
            return ""
        if kind == 1:
            return "".join(rng.choices(string.printable, k=rng.randrange(1, 40)))
        if kind == 2:  # any code point but surrogates, which protobuf cannot hold
            return "".join(
                chr(rng.choice([rng.randrange(0xD800), rng.randrange(0xE000, 0x110000)]))
                for _ in range(rng.randrange(1, 20))
            )
        if kind == 3:
            return rng.choice(["x" * 129, "a" * 4096, "../../etc/passwd", "\x00", "*", "%s%n"])
        return "".join(rng.choices(string.ascii_letters + string.digits + "_.:@-", k=8))

    def user(self) -> str:
        return self.rng.choice(USERS) if self.sane() else self.text()

    def integer(self, bits: int = 64) -> int:
        rng = self.rng
        high = 2 ** (bits - 1)
        return rng.choice(
            [
                0,
                1,
                -1,
                high - 1,
                -high,
                rng.randrange(ITEMS),
                rng.randrange(-high, high),
                rng.randrange(-1000, 1000),
            ]
        )

    def item_id(self) -> int:
        return self.rng.randrange(ITEMS) if self.sane() else self.integer()

    def real(self) -> float:
        rng = self.rng
        return rng.choice(
            [
                0.0,
                -0.0,
                1.0,
                float("nan"),
                float("inf"),
                -float("inf"),
                3.0e38,
                1e-45,
                rng.gauss(0, 1),
            ]
        )

    def score(self) -> float:
        return self.rng.gauss(0, 1) if self.sane() else self.real()

    def item_ids(self, count: int) -> list[int]:
        """Distinct ids of the catalogue, or any ids (repeated, negative...)."""
        if self.sane() and count <= ITEMS:
            return self.rng.sample(range(ITEMS), count)
        return [self.item_id() for _ in range(count)]

    def vector(self, size: int) -> list[float]:
        finite = self.sane()
        return [self.rng.gauss(0, 1) if finite else self.real() for _ in range(size)]

    def count(self, usual: int, large: int) -> int:
        return (
            self.rng.randrange(large)
            if self.chance(self.hostility / 4)
            else self.rng.randrange(usual)
        )

    def timestamp(self) -> timestamp_pb2.Timestamp:
        rng = self.rng
        if self.sane():
            return timestamp_pb2.Timestamp(seconds=rng.randrange(1_600_000_000, 1_800_000_000))
        return timestamp_pb2.Timestamp(
            seconds=rng.choice([253_402_300_800, -62_135_596_801, 2**63 - 1, -(2**63), 0]),
            nanos=rng.choice([0, -5, 999_999_999, 1_000_000_000, -(2**31), 2**31 - 1]),
        )

    def context(self) -> common_pb2.RequestContext:
        context = common_pb2.RequestContext(
            device_type=self.rng.choice([0, 1, 2, 3, 4, 99, -7]),
            country=self.rng.choice(["US", "DE", ""]) if self.sane() else self.text(),
            locale=self.rng.choice(["en-US", ""]) if self.sane() else self.text(),
        )
        if self.chance(0.5):
            context.request_time.CopyFrom(self.timestamp())
        if self.chance(0.4):
            context.category = self.rng.choice(CATEGORIES) if self.sane() else self.text()
        return context


def recommend(values: Values) -> Message:
    rng = values.rng
    return recommend_pb2.RecommendRequest(
        user_id=values.user(),
        surface=rng.choice(SURFACES) if values.sane() else values.text(),
        limit=rng.randrange(1, 101) if values.sane() else values.integer(32),
        context=values.context(),
        excluded_item_ids=[values.item_id() for _ in range(values.count(5, 1_200))],
    )


def delete_user_data(values: Values) -> Message:
    return recommend_pb2.DeleteUserDataRequest(user_id=values.user())


def rank(values: Values) -> Message:
    item_ids = values.item_ids(values.count(30, 6_000))
    request = rank_pb2.RankRequest(user_id=values.user(), context=values.context())
    if values.chance(0.5):
        request.candidates.extend(
            rank_pb2.RankCandidate(item_id=item_id, candidate_score=values.score())
            for item_id in item_ids
        )
    if values.chance(0.5) or not values.sane():  # columns; sometimes beside the sub-messages
        scores = [values.score() for _ in item_ids]
        if not values.sane():
            del scores[values.rng.randrange(len(scores) + 1) :]  # lengths that may not match
        request.candidate_item_ids.extend(item_ids)
        request.candidate_scores.extend(scores)
    request.response_layout = layout(values)  # type: ignore[assignment]
    return request


def layout(values: Values) -> int:
    """A response layout: a known one, or a number a newer client might send."""
    return values.rng.choice([0, 1]) if values.sane() else values.integer(32)


def record_interactions(values: Values) -> Message:
    rng = values.rng
    events = [
        event_pb2.InteractionEvent(
            event_id=f"fuzz-{rng.getrandbits(48)}" if values.sane() else values.text(),
            user_id=values.user(),
            item_id=values.item_id(),
            type=rng.randrange(8) if values.sane() else values.integer(32),
            value=values.score(),
            event_time=values.timestamp(),
            surface=rng.choice(SURFACES) if values.sane() else values.text(),
        )
        for _ in range(values.count(6, 1_100))
    ]
    if events and values.chance(0.1):
        events.append(events[0])  # a repeated event id
    return ingest_pb2.RecordInteractionsRequest(events=events)


def retrieve(values: Values) -> Message:
    rng = values.rng
    request = retrieve_pb2.RetrieveRequest(
        k=rng.choice([0, 10, 1000]) if values.sane() else values.integer(32),
        excluded_item_ids=[values.item_id() for _ in range(values.count(5, 12_000))],
        require_all_shards=values.chance(0.3),
        response_layout=layout(values),  # type: ignore[arg-type]
    )
    if values.chance(0.3):
        request.search_parameters.nprobe = (
            values.rng.randrange(64) if values.sane() else values.integer(32)
        )
        request.search_parameters.ef_search = (
            values.rng.randrange(512) if values.sane() else values.integer(32)
        )
    which = rng.randrange(3)
    if which == 1:
        request.user_id = values.user()
    elif which == 2:
        size = DIMENSION if values.sane() else values.count(20, 5_000)
        request.query_vector.values.extend(values.vector(size))
        request.query_vector.embedding_version = "e1" if values.sane() else values.text()
    return request


def search(values: Values) -> Message:
    rng = values.rng
    count = rng.randrange(4) if values.sane() else values.integer(32)
    size = max(0, min(count, 4)) * DIMENSION if values.sane() else rng.randrange(40)
    request = shard_pb2.SearchRequest(
        query_vectors=values.vector(size),
        query_count=count,
        k=rng.choice([1, 10, 100]) if values.sane() else values.integer(32),
        embedding_version="e1" if values.sane() else values.text(),
    )
    if values.chance(0.3):
        request.search_parameters.nprobe = (
            values.rng.randrange(64) if values.sane() else values.integer(32)
        )
        request.search_parameters.ef_search = (
            values.rng.randrange(512) if values.sane() else values.integer(32)
        )
    return request


def upsert(values: Values) -> Message:
    rng = values.rng
    ids = [values.item_id() for _ in range(values.count(4, 50))]
    size = len(ids) * DIMENSION if values.sane() else rng.randrange(40)
    return shard_pb2.UpsertRequest(
        item_ids=ids,
        vectors=values.vector(size),
        embedding_version="e1" if values.sane() else values.text(),
    )


def delete(values: Values) -> Message:
    # Far-away ids mostly: the shard keeps its items for the other methods.
    ids = [values.integer() for _ in range(values.count(4, 50))]
    return shard_pb2.DeleteRequest(item_ids=ids)


def info(values: Values) -> Message:
    return shard_pb2.InfoRequest()


def load_snapshot(values: Values) -> Message:
    version = values.rng.choice(["", "v1"]) if values.chance(0.3) else values.text()
    return shard_pb2.LoadSnapshotRequest(index_version=version)


Generator = Callable[[Values], Message]
WORLD_METHODS: dict[str, Generator] = {
    "/recsys.v1.RecommendService/Recommend": recommend,
    "/recsys.v1.RecommendService/DeleteUserData": delete_user_data,
    "/recsys.v1.RankService/Rank": rank,
    "/recsys.v1.IngestService/RecordInteractions": record_interactions,
    "/recsys.v1.RetrieveService/Retrieve": retrieve,
}
SHARD_METHODS: dict[str, Generator] = {
    "/recsys.v1.IndexShardService/Search": search,
    "/recsys.v1.IndexShardService/Upsert": upsert,
    "/recsys.v1.IndexShardService/Delete": delete,
    "/recsys.v1.IndexShardService/Info": info,
    "/recsys.v1.IndexShardService/LoadSnapshot": load_snapshot,
}


def garble(rng: random.Random, data: bytes) -> bytes:
    """Flips, inserts, deletes and cuts bytes of a serialized message."""
    garbled = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        operation = rng.randrange(4)
        position = rng.randrange(len(garbled) + 1)
        if operation == 0 and garbled:
            garbled[min(position, len(garbled) - 1)] = rng.randrange(256)
        elif operation == 1:
            garbled[position:position] = rng.randbytes(rng.randrange(1, 6))
        elif operation == 2:
            del garbled[position : position + rng.randrange(1, 6)]
        else:
            del garbled[position:]
    return bytes(garbled)


def payloads(rng: random.Random, generate: Generator, count: int) -> list[bytes]:
    values = Values(rng)
    generated: list[bytes] = []
    for _ in range(count):
        values.hostility = rng.choice([0.0, 0.03, 0.1, 0.5])
        roll = rng.random()
        if roll < 0.2:
            generated.append(rng.randbytes(rng.randrange(65)))
        else:
            data = generate(values).SerializeToString()
            generated.append(data if roll < 0.6 else garble(rng, data))
    return generated


async def answers(
    channel: grpc.aio.Channel, method: str, requests: list[bytes]
) -> list[tuple[grpc.StatusCode, str]]:
    """The status code and details of each call."""

    def identity(data: bytes) -> bytes:
        return data

    call = channel.unary_unary(method, request_serializer=identity, response_deserializer=identity)

    async def code_of(payload: bytes) -> tuple[grpc.StatusCode, str]:
        try:
            await call(payload, timeout=30)
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
        return grpc.StatusCode.OK, ""

    codes: list[tuple[grpc.StatusCode, str]] = []
    for start in range(0, len(requests), CHUNK):
        chunk = requests[start : start + CHUNK]
        codes.extend(await asyncio.gather(*(code_of(payload) for payload in chunk)))
    return codes


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[GrpcApplication]:
    app = await build_world(tmp_path, rate_limit={"requests_per_window": 1_000_000})
    yield app
    await app.shutdown()


@pytest.fixture
async def shard(world: GrpcApplication, tmp_path: Path) -> AsyncIterator[GrpcApplication]:
    """`recsys serve shard` for shard 0 of the world's snapshots."""
    app = await start_shard_of_world(tmp_path, access_log=False)
    yield app
    await app.shutdown()


async def test_no_request_answers_unknown_or_internal(
    world: GrpcApplication, shard: GrpcApplication, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    rng = random.Random(SEED)
    targets = [(world, WORLD_METHODS), (shard, SHARD_METHODS)]
    seen: dict[str, Counter[str]] = {}
    offending: list[str] = []
    total = 0
    for app, methods in targets:
        async with grpc.aio.insecure_channel(app.address) as channel:
            for method, generate in methods.items():
                requests = payloads(rng, generate, CALLS_PER_METHOD)
                answered = await answers(channel, method, requests)
                total += len(answered)
                seen[method] = Counter(code.name for code, _ in answered)
                offending += [
                    f"{method} {code.name} {details[:200]!r} {payload.hex()}"
                    for (code, details), payload in zip(answered, requests, strict=True)
                    if code in FORBIDDEN or CLIENT_LIMIT in details
                ]
    assert total >= 10_000
    assert not offending, "\n".join(offending[:20])
    errors = [
        f"{record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.levelno >= logging.ERROR
    ]
    assert not errors, "\n".join(errors[:20])
    # The mix reaches past validation: every method answers OK sometimes, and refuses too.
    for method, codes in seen.items():
        assert codes["OK"] > 0, (method, codes)
        assert codes["INVALID_ARGUMENT"] > 0, (method, codes)
