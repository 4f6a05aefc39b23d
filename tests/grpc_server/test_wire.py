"""The checks of grpc_server/decoding.py without a server: locating the fault of bytes that do
not decode (`wire.locate`), and the ranges of well-known types (`check_message`)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.errors import InvalidArgument
from recsys.grpc_server.well_known import check_message
from recsys.grpc_server.wire import locate
from recsys.v1 import (
    index_shard_service_pb2,
    ingest_service_pb2,
    interaction_event_pb2,
    rank_service_pb2,
    recommend_service_pb2,
    retrieve_service_pb2,
)

REQUESTS: list[type[Message]] = [
    recommend_service_pb2.RecommendRequest,
    recommend_service_pb2.DeleteUserDataRequest,
    rank_service_pb2.RankRequest,
    ingest_service_pb2.RecordInteractionsRequest,
    retrieve_service_pb2.RetrieveRequest,
    index_shard_service_pb2.SearchRequest,
    index_shard_service_pb2.UpsertRequest,
    index_shard_service_pb2.DeleteRequest,
    index_shard_service_pb2.InfoRequest,
    index_shard_service_pb2.LoadSnapshotRequest,
]
SAMPLES = [
    recommend_service_pb2.RecommendRequest(
        user_id="alice", surface="homepage", limit=3, excluded_item_ids=[1, 2, 300]
    ).SerializeToString(),
    ingest_service_pb2.RecordInteractionsRequest(
        events=[
            interaction_event_pb2.InteractionEvent(
                event_id=f"e{index}", user_id="u", event_time=timestamp_pb2.Timestamp(seconds=9)
            )
            for index in range(3)
        ]
    ).SerializeToString(),
    rank_service_pb2.RankRequest(
        user_id="u", candidates=[rank_service_pb2.RankCandidate(item_id=3, candidate_score=0.5)]
    ).SerializeToString(),
    index_shard_service_pb2.SearchRequest(
        query_vectors=[0.5] * 8, query_count=1
    ).SerializeToString(),
]


def decodes(message_class: type[Message], data: bytes) -> bool:
    try:
        message_class.FromString(data)
    except Exception:
        return False
    return True


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """Random bytes, or a serialized request with bytes changed and cut."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=40))
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(0, 3))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(max_examples=2_000, deadline=None)
@given(st.sampled_from(REQUESTS), payloads())
def test_locate_finds_a_fault_exactly_where_protobuf_refuses_the_bytes(
    message_class: type[Message], data: bytes
) -> None:
    assert (locate(message_class.DESCRIPTOR, data) is None) == decodes(message_class, data)


def test_locate_names_the_field_with_its_path() -> None:
    event = interaction_event_pb2.InteractionEvent
    batch = ingest_service_pb2.RecordInteractionsRequest(
        events=[event(event_id=f"event-{index}", user_id="u") for index in range(5)]
    ).SerializeToString()
    descriptor = ingest_service_pb2.RecordInteractionsRequest.DESCRIPTOR
    fault = locate(descriptor, batch.replace(b"event-3", b"event-\xff"))
    assert fault is not None
    assert (fault.field, fault.description) == ("events[3].event_id", "is not valid UTF-8")
    fault = locate(descriptor, batch[:-1])
    assert fault is not None
    assert (fault.field, fault.description) == ("events[4]", "is truncated")  # its length
    recommend = recommend_service_pb2.RecommendRequest.DESCRIPTOR
    # The tag of an unknown field 99 (varint), then no value.
    fault = locate(recommend, b"\x98\x06")
    assert fault is not None
    assert (fault.field, fault.description) == ("", "field number 99 is truncated")
    fault = locate(recommend, b"\x2a\x03\x01\x80\x80")  # packed excluded_item_ids, cut varint
    assert fault is not None
    assert (fault.field, fault.description) == ("excluded_item_ids", "is truncated")


def schedule_class() -> Any:
    """A message with a map, a repeated field, a recursion and Timestamps at every depth."""
    pool = descriptor_pool.DescriptorPool()
    timestamp_file = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(timestamp_file)
    pool.Add(timestamp_file)
    field = descriptor_pb2.FieldDescriptorProto
    schedule_file = descriptor_pb2.FileDescriptorProto(
        name="recsys_test_schedule.proto",
        package="recsys.test",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    schedule = schedule_file.message_type.add(name="Schedule")
    entry = schedule.nested_type.add(name="AtEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    entry.field.add(
        name="value",
        number=2,
        type=field.TYPE_MESSAGE,
        type_name=".google.protobuf.Timestamp",
        label=field.LABEL_OPTIONAL,
    )
    for name, number, type_name, label in [
        ("at", 1, ".recsys.test.Schedule.AtEntry", field.LABEL_REPEATED),
        ("times", 2, ".google.protobuf.Timestamp", field.LABEL_REPEATED),
        ("child", 3, ".recsys.test.Schedule", field.LABEL_OPTIONAL),
    ]:
        schedule.field.add(
            name=name, number=number, type=field.TYPE_MESSAGE, type_name=type_name, label=label
        )
    pool.Add(schedule_file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("recsys.test.Schedule"))


def test_check_message_names_every_out_of_range_timestamp_at_any_depth() -> None:
    schedule = schedule_class()()
    schedule.at["ok"].seconds = 5
    schedule.at["late"].seconds = 253_402_300_800
    schedule.times.add(seconds=1)
    schedule.times.add(nanos=-5)
    schedule.child.child.times.add(seconds=-62_135_596_801)
    with pytest.raises(InvalidArgument) as caught:
        check_message(schedule)
    assert sorted(v.field for v in caught.value.violations) == [
        "at[late]",
        "child.child.times[0]",
        "times[1]",
    ]
    check_message(schedule_class()())


def test_check_message_passes_messages_without_timestamps() -> None:
    check_message(rank_service_pb2.RankRequest(user_id="u"))
    check_message(
        recommend_service_pb2.RecommendRequest(
            context={"request_time": timestamp_pb2.Timestamp(seconds=253_402_300_799)}
        )
    )


def test_locate_gives_up_after_its_step_budget() -> None:
    descriptor = recommend_service_pb2.RecommendRequest.DESCRIPTOR
    many_ids = recommend_service_pb2.RecommendRequest(excluded_item_ids=[1] * 1_000)
    data = many_ids.SerializeToString() + b"\x0a\x05ab"
    fault = locate(descriptor, data)
    assert fault is not None
    assert (fault.field, fault.description) == ("user_id", "is truncated")
    assert locate(descriptor, data, max_steps=500) is None
