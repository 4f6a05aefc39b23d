"""Protobuf <-> domain conversions shared by the servicers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
from google.protobuf import timestamp_pb2

from recsys.domain.candidates import SourceColumn, SourceKind
from recsys.domain.interactions import Interaction, InteractionKind
from recsys.domain.requests import DeviceType, RecommendQuery, RequestContext
from recsys.domain.validation import Violations
from recsys.v1 import common_pb2, interaction_event_pb2, rank_service_pb2, recommend_service_pb2

_DEVICE_TYPES = {
    common_pb2.DEVICE_TYPE_UNSPECIFIED: DeviceType.UNKNOWN,
    common_pb2.DEVICE_TYPE_MOBILE: DeviceType.MOBILE,
    common_pb2.DEVICE_TYPE_WEB: DeviceType.WEB,
    common_pb2.DEVICE_TYPE_TABLET: DeviceType.TABLET,
    common_pb2.DEVICE_TYPE_TV: DeviceType.TV,
}

CANDIDATE_SOURCES = {
    SourceKind.RETRIEVAL: common_pb2.CANDIDATE_SOURCE_RETRIEVAL,
    SourceKind.NEIGHBOURS: common_pb2.CANDIDATE_SOURCE_NEIGHBOURS,
    SourceKind.POPULARITY: common_pb2.CANDIDATE_SOURCE_POPULARITY,
}
_SOURCE_KINDS = {number: kind for kind, number in CANDIDATE_SOURCES.items()}
CANDIDATE_SOURCE_NAMES = {
    kind: common_pb2.CandidateSource.Name(number) for kind, number in CANDIDATE_SOURCES.items()
}
_SOURCE_NAMES = ", ".join(CANDIDATE_SOURCE_NAMES.values())

_INTERACTION_KINDS = {
    interaction_event_pb2.INTERACTION_TYPE_VIEW: InteractionKind.VIEW,
    interaction_event_pb2.INTERACTION_TYPE_CLICK: InteractionKind.CLICK,
    interaction_event_pb2.INTERACTION_TYPE_LIKE: InteractionKind.LIKE,
    interaction_event_pb2.INTERACTION_TYPE_ADD_TO_CART: InteractionKind.ADD_TO_CART,
    interaction_event_pb2.INTERACTION_TYPE_PURCHASE: InteractionKind.PURCHASE,
    interaction_event_pb2.INTERACTION_TYPE_RATE: InteractionKind.RATE,
    interaction_event_pb2.INTERACTION_TYPE_SKIP: InteractionKind.SKIP,
}


def timestamp_to_datetime(timestamp: timestamp_pb2.Timestamp, *, field: str) -> dt.datetime:
    """The UTC datetime of a Timestamp; InvalidArgument naming `field` when no datetime can hold
    it. (The gRPC server already refuses such requests as they are decoded,
    `recsys.grpc_server.decoding`; this keeps every other caller of the servicers safe too.)"""
    violations = Violations()
    violations.check_timestamp(field, timestamp.seconds, timestamp.nanos)
    violations.raise_if_any()
    return timestamp.ToDatetime(tzinfo=dt.UTC)


def request_context_from_proto(
    context: common_pb2.RequestContext, *, field: str = "context"
) -> RequestContext:
    """`field`: where the context sits in the request, for the paths of field violations."""
    return RequestContext(
        # Unknown enum numbers from newer clients are treated as unknown devices.
        device_type=_DEVICE_TYPES.get(context.device_type, DeviceType.UNKNOWN),
        country=context.country,
        locale=context.locale,
        request_time=(
            timestamp_to_datetime(context.request_time, field=f"{field}.request_time")
            if context.HasField("request_time")
            else None
        ),
        category=context.category if context.HasField("category") else None,
    )


def recommend_query_from_proto(request: recommend_service_pb2.RecommendRequest) -> RecommendQuery:
    return RecommendQuery(
        user_id=request.user_id,
        surface=request.surface,
        limit=request.limit,
        context=request_context_from_proto(request.context),
        excluded_item_ids=tuple(request.excluded_item_ids),
    )


def interaction_from_proto(
    event: interaction_event_pb2.InteractionEvent, *, field: str = "event"
) -> Interaction:
    """`field`: where the event sits in the request (`events[3]`), for field violations."""
    return Interaction(
        event_id=event.event_id,
        user_id=event.user_id,
        item_id=event.item_id,
        kind=_INTERACTION_KINDS.get(event.type),
        value=event.value,
        event_time=(
            timestamp_to_datetime(event.event_time, field=f"{field}.event_time")
            if event.HasField("event_time")
            else None
        ),
        surface=event.surface,
    )


def candidate_sources_from_proto(
    columns: Sequence[rank_service_pb2.CandidateSourceColumn],
    count: int,
    violations: Violations,
    *,
    field: str = "candidate_sources",
) -> dict[SourceKind, SourceColumn]:
    """What each source said about the request's `count` candidates, by source. Every problem
    is added to `violations` naming the column's field (`candidate_sources[1].positions`);
    a column with one is left out of the answer."""
    sources: dict[SourceKind, SourceColumn] = {}
    seen: set[SourceKind] = set()
    for index, column in enumerate(columns):
        path = f"{field}[{index}]"
        valid = True
        kind = _SOURCE_KINDS.get(column.source)
        if kind is None and column.source != common_pb2.CANDIDATE_SOURCE_UNSPECIFIED:
            # A source newer than this server: no model it serves reads it, and refusing the
            # request would fail every Recommend during a rolling upgrade.
            continue
        if kind is None:
            violations.add(f"{path}.source", f"must be one of {_SOURCE_NAMES}, got {column.source}")
            valid = False
        elif kind in seen:
            violations.add(f"{path}.source", f"{CANDIDATE_SOURCE_NAMES[kind]} is given twice")
            valid = False
        else:
            seen.add(kind)
        scores = np.fromiter(column.scores, np.float32, len(column.scores))
        positions = np.fromiter(column.positions, np.int64, len(column.positions))
        for name, length in (("scores", len(scores)), ("positions", len(positions))):
            if length != count:
                violations.add(
                    f"{path}.{name}", f"must hold one entry per candidate: {length} for {count}"
                )
                valid = False
        if not np.isfinite(scores).all():
            violations.add(f"{path}.scores", "scores must be finite")
            valid = False
        if len(positions) and positions.min() < -1:
            violations.add(f"{path}.positions", "positions must be -1 (not found) or above")
            valid = False
        if valid and kind is not None:
            sources[kind] = SourceColumn(kind, scores, positions)
    return sources


def history_size_from_proto(
    request: rank_service_pb2.RankRequest, violations: Violations
) -> int | None:
    """The user's history size; None when the caller did not give it (unknown)."""
    if not request.HasField("user_history_size"):
        return None
    if request.user_history_size < 0:
        violations.add(
            "user_history_size", f"must be non-negative, got {request.user_history_size}"
        )
    return request.user_history_size


def candidate_sources_to_proto(
    values: Iterable[str],
) -> list[common_pb2.CandidateSource.ValueType]:
    """`SourceKind` values as CandidateSource numbers, in the given order; a value that names
    no source is left out (a flag must never fail an answer)."""
    numbers: list[common_pb2.CandidateSource.ValueType] = []
    for value in values:
        try:
            numbers.append(CANDIDATE_SOURCES[SourceKind(value)])
        except ValueError:
            continue
    return numbers


_LENGTH_DELIMITED = 2  # the wire type of packed repeated fields


def packed_floats(field_number: int, values: npt.ArrayLike) -> bytes:
    """The wire encoding of a packed `repeated float` field (number `field_number`) holding
    `values`, for the message's `MergeFromString`: the field's bytes are the little-endian
    floats themselves, so this skips a Python float per value (~20x faster in upb than
    extending the field from a list)."""
    data = np.asarray(values, dtype="<f4").tobytes()
    return _varint(field_number << 3 | _LENGTH_DELIMITED) + _varint(len(data)) + data


def _varint(value: int) -> bytes:
    encoded = bytearray()
    while value >= 0x80:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)
