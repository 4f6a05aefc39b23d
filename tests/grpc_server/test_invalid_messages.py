"""Requests that are not valid messages (out-of-range Timestamps, bytes that do not decode)
answer INVALID_ARGUMENT through the interceptors, like any other bad input: field violations,
ErrorInfo, the request id, the access log line, and no ERROR log."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2, wrappers_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from recsys.errors import FailedPrecondition, FieldViolation, InvalidArgument
from recsys.grpc_server.app import GrpcApplication
from recsys.grpc_server.decoding import InvalidRequest, safe_deserializer
from recsys.servicers.convert import interaction_from_proto, request_context_from_proto
from recsys.v1 import (
    common_pb2,
    index_shard_service_pb2,
    ingest_service_pb2,
    interaction_event_pb2,
    rank_service_pb2,
    recommend_service_pb2,
    retrieve_service_pb2,
)
from tests.conftest import StartApp
from tests.support.world import build_world, start_shard_of_world

DETAILS_KEY = "grpc-status-details-bin"
RECOMMEND = "/recsys.v1.RecommendService/Recommend"
RANK = "/recsys.v1.RankService/Rank"
RECORD = "/recsys.v1.IngestService/RecordInteractions"
# The finding's example: a RecommendRequest whose user_id (4 bytes) is not UTF-8.
UNDECODABLE_RECOMMEND = bytes.fromhex("0a04fffefdfc1208686f6d6570616765180a")
NOT_UTF8 = b"\xff\xfe\xfd\xfc"
BAD_TIMESTAMPS = [
    pytest.param(253_402_300_800, 0, id="after-9999"),
    pytest.param(0, -5, id="negative-nanos"),
]
PUBLIC_FILES = [
    recommend_service_pb2,
    rank_service_pb2,
    ingest_service_pb2,
    retrieve_service_pb2,
    index_shard_service_pb2,
]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[GrpcApplication]:
    app = await build_world(tmp_path, logging={"access_log": True})
    yield app
    await app.shutdown()


async def shard_app(tmp_path: Path) -> GrpcApplication:
    """`recsys serve shard` for shard 0 of the world's snapshots (built by build_world)."""
    return await start_shard_of_world(tmp_path, access_log=True)


def event(index: int, **changes: Any) -> interaction_event_pb2.InteractionEvent:
    fields: dict[str, Any] = {
        "event_id": f"event-{index}",
        "user_id": "alice",
        "item_id": 100 + index,
        "type": interaction_event_pb2.INTERACTION_TYPE_CLICK,
        "value": 1.0,
        "event_time": timestamp_pb2.Timestamp(seconds=1_700_000_000 + index),
        "surface": "homepage",
    }
    fields.update(changes)
    return interaction_event_pb2.InteractionEvent(**fields)


def context_at(seconds: int, nanos: int) -> common_pb2.RequestContext:
    return common_pb2.RequestContext(
        country="US", request_time=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    )


def requests_with_timestamp(seconds: int, nanos: int) -> list[tuple[str, Message, str]]:
    """(method, request, the field that must be named) for each method taking a Timestamp."""
    events = [event(index) for index in range(5)]
    events[3].event_time.CopyFrom(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos))
    return [
        (
            RECOMMEND,
            recommend_service_pb2.RecommendRequest(
                user_id="alice", surface="homepage", limit=10, context=context_at(seconds, nanos)
            ),
            "context.request_time",
        ),
        (
            RANK,
            rank_service_pb2.RankRequest(
                user_id="alice",
                candidates=[rank_service_pb2.RankCandidate(item_id=1, candidate_score=0.5)],
                context=context_at(seconds, nanos),
            ),
            "context.request_time",
        ),
        (
            RECORD,
            ingest_service_pb2.RecordInteractionsRequest(events=events),
            "events[3].event_time",
        ),
    ]


def undecodable_requests() -> list[tuple[str, bytes, str]]:
    """(method, bytes, the field that must be named): a user id that is not UTF-8."""
    rank = rank_service_pb2.RankRequest(
        user_id="@@@@", candidates=[rank_service_pb2.RankCandidate(item_id=1)]
    ).SerializeToString()
    events = [event(index, user_id="@@@@" if index == 3 else "alice") for index in range(5)]
    record = ingest_service_pb2.RecordInteractionsRequest(events=events).SerializeToString()
    return [
        (RECOMMEND, UNDECODABLE_RECOMMEND, "user_id"),
        (RANK, rank.replace(b"@@@@", NOT_UTF8), "user_id"),
        (RECORD, record.replace(b"@@@@", NOT_UTF8), "events[3].user_id"),
    ]


async def call_raw(
    channel: grpc.aio.Channel, method: str, payload: bytes, request_id: str = ""
) -> grpc.aio.AioRpcError:
    """Sends `payload` as it is; returns the error the call ended with."""
    identity: Callable[[bytes], bytes] = lambda data: data  # noqa: E731
    call = channel.unary_unary(method, request_serializer=identity, response_deserializer=identity)
    metadata = (("x-request-id", request_id),) if request_id else ()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(payload, metadata=metadata, timeout=10)
    return caught.value


def bad_request_of(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.BadRequest, Any]:
    trailing = dict(error.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailing[DETAILS_KEY])
    bad_request = error_details_pb2.BadRequest()
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(bad_request)
    assert status.details[-1].Unpack(info)
    return bad_request, info


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.levelno >= logging.ERROR
    ]


async def access_codes(caplog: pytest.LogCaptureFixture, method: str) -> list[str]:
    """The codes of `method`'s access log lines; the server may log its line a moment after the
    caller saw the status."""
    for _ in range(200):
        codes = [
            record.grpc_code  # type: ignore[attr-defined]
            for record in caplog.records
            if record.name == "recsys.access" and record.grpc_method == method  # type: ignore[attr-defined]
        ]
        if codes:
            return codes
        await asyncio.sleep(0.01)
    return []


async def assert_answered_invalid(
    caplog: pytest.LogCaptureFixture,
    error: grpc.aio.AioRpcError,
    method: str,
    field: str,
    request_id: str,
) -> error_details_pb2.ErrorInfo:
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert dict(error.trailing_metadata() or ())["x-request-id"] == request_id
    bad_request, info = bad_request_of(error)
    assert [violation.field for violation in bad_request.field_violations] == [field]
    assert (info.domain, info.metadata["request_id"]) == ("recsys.v1", request_id)
    assert await access_codes(caplog, method) == ["INVALID_ARGUMENT"]
    assert errors_logged(caplog) == []
    assert "Traceback" not in error.details()
    return info


@pytest.mark.parametrize(("seconds", "nanos"), BAD_TIMESTAMPS)
async def test_out_of_range_timestamps_answer_invalid_argument(
    world: GrpcApplication, caplog: pytest.LogCaptureFixture, seconds: int, nanos: int
) -> None:
    caplog.set_level(logging.INFO)
    async with grpc.aio.insecure_channel(world.address) as channel:
        for number, (method, request, field) in enumerate(requests_with_timestamp(seconds, nanos)):
            caplog.clear()
            request_id = f"bad-time-{number}"
            error = await call_raw(channel, method, request.SerializeToString(), request_id)
            info = await assert_answered_invalid(caplog, error, method, field, request_id)
            name = field.rsplit(".", 1)[-1].upper()
            assert info.reason == f"{name}_INVALID"
            assert field in error.details()
            assert ("nanos" in error.details()) == (nanos < 0)


async def test_bytes_that_do_not_decode_answer_invalid_argument_naming_the_field(
    world: GrpcApplication, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with grpc.aio.insecure_channel(world.address) as channel:
        for number, (method, payload, field) in enumerate(undecodable_requests()):
            caplog.clear()
            request_id = f"undecodable-{number}"
            error = await call_raw(channel, method, payload, request_id)
            info = await assert_answered_invalid(caplog, error, method, field, request_id)
            assert info.reason == "UNDECODABLE_REQUEST"
            assert f"{field}: is not valid UTF-8; the request could not be decoded" in (
                error.details()
            )


def public_methods() -> list[str]:
    return [
        f"/{service.full_name}/{method.name}"
        for module in PUBLIC_FILES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


# Bytes that no message decodes: a truncated tag; a length running past the end; an end-group
# tag without a group; a group that never ends.
GARBAGE = [b"\xff", b"\x0a\x05ab", b"\x0c", b"\x0b\x08\x01"]


async def test_garbage_on_every_public_method_answers_invalid_argument(
    world: GrpcApplication, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    shard = await shard_app(tmp_path)
    methods = public_methods()
    assert len(methods) == 10
    try:
        for method in methods:
            address = shard.address if "IndexShardService" in method else world.address
            async with grpc.aio.insecure_channel(address) as channel:
                for number, payload in enumerate(GARBAGE):
                    caplog.clear()
                    request_id = f"garbage-{number}"
                    error = await call_raw(channel, method, payload, request_id)
                    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (method, payload)
                    assert dict(error.trailing_metadata() or ())["x-request-id"] == request_id
                    bad_request, info = bad_request_of(error)
                    assert len(bad_request.field_violations) == 1
                    assert "could not be decoded" in bad_request.field_violations[0].description
                    assert info.reason == "UNDECODABLE_REQUEST"
                    assert await access_codes(caplog, method) == ["INVALID_ARGUMENT"]
                    assert errors_logged(caplog) == [], method
    finally:
        await shard.shutdown()


def test_a_deserializer_that_is_no_message_class_names_the_whole_request() -> None:
    def deserializer(data: bytes) -> str:
        raise ValueError("not text")

    decoded = safe_deserializer(deserializer)(b"\x00")
    assert isinstance(decoded, InvalidRequest)
    assert [(v.field, v.description) for v in decoded.error.violations] == [
        ("", "the request could not be decoded")
    ]
    parsed = safe_deserializer(wrappers_pb2.StringValue.FromString)(b"\x0a\x01x")
    assert parsed == wrappers_pb2.StringValue(value="x")


def test_conversion_refuses_timestamps_no_datetime_holds() -> None:
    """The servicers' conversions check too, for callers that skip the gRPC server."""
    with pytest.raises(InvalidArgument) as caught:
        request_context_from_proto(context_at(253_402_300_800, 0))
    assert [v.field for v in caught.value.violations] == ["context.request_time"]
    with pytest.raises(InvalidArgument) as caught:
        interaction_from_proto(event(3, event_time=timestamp_pb2.Timestamp(nanos=-5)), field="e")
    assert [v.field for v in caught.value.violations] == ["e.event_time"]
    latest = request_context_from_proto(context_at(253_402_300_799, 999_999_999))
    assert latest.request_time == dt.datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC)
    earliest = interaction_from_proto(
        event(1, event_time=timestamp_pb2.Timestamp(seconds=-62_135_596_800))
    )
    assert earliest.event_time == dt.datetime(1, 1, 1, tzinfo=dt.UTC)


async def _too_many_violations(request: wrappers_pb2.StringValue, context: object) -> None:
    raise InvalidArgument(
        [FieldViolation(f"events[{index}].user_id", "ist ungültig ✗" * 3) for index in range(2000)]
    )


async def _long_message(request: wrappers_pb2.StringValue, context: object) -> None:
    raise FailedPrecondition(f"the embedding version {'🙂' * 20_000!r} is not the index's")


def big_errors_handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "recsys.test.BigErrors",
        {
            name: grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=wrappers_pb2.StringValue.FromString,
                response_serializer=wrappers_pb2.StringValue.SerializeToString,
            )
            for name, behaviour in (("Many", _too_many_violations), ("Long", _long_message))
        },
    )


async def test_error_statuses_stay_within_the_callers_metadata_limit(start_app: StartApp) -> None:
    """Past 8 KiB of trailers a caller gets RESOURCE_EXHAUSTED instead of the status: the
    message is cut and the violations that do not fit are counted instead."""
    app = await start_app(generic_handlers=[big_errors_handler()])
    async with grpc.aio.insecure_channel(app.address) as channel:
        many = await call_raw(channel, "/recsys.test.BigErrors/Many", b"", "many")
        long = await call_raw(channel, "/recsys.test.BigErrors/Long", b"", "long")
    assert many.code() is grpc.StatusCode.INVALID_ARGUMENT, many.details()
    bad_request, info = bad_request_of(many)
    kept = len(bad_request.field_violations)
    assert 10 < kept < 2000
    assert [v.field for v in bad_request.field_violations] == [
        f"events[{index}].user_id" for index in range(kept)
    ]
    assert info.metadata["omitted_violations"] == str(2000 - kept)
    assert len(many.details().encode()) <= 512
    assert long.code() is grpc.StatusCode.FAILED_PRECONDITION, long.details()
    assert long.details().startswith("the embedding version '🙂")
    assert long.details().endswith("\u2026")
    assert len(long.details().encode()) <= 512
