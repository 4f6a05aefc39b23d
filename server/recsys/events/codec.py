"""Interaction and deletion events <-> their Kafka payloads (serialized recsys.v1 protobufs,
keyed by user id so that one user's events stay in order on one partition)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from google.protobuf import message as protobuf_message

from recsys.domain.interactions import Interaction, InteractionKind, validate_interactions
from recsys.errors import InvalidArgument
from recsys.servicers.convert import interaction_from_proto
from recsys.v1 import interaction_event_pb2, user_deletion_event_pb2

_TYPES = {
    InteractionKind.VIEW: interaction_event_pb2.INTERACTION_TYPE_VIEW,
    InteractionKind.CLICK: interaction_event_pb2.INTERACTION_TYPE_CLICK,
    InteractionKind.LIKE: interaction_event_pb2.INTERACTION_TYPE_LIKE,
    InteractionKind.ADD_TO_CART: interaction_event_pb2.INTERACTION_TYPE_ADD_TO_CART,
    InteractionKind.PURCHASE: interaction_event_pb2.INTERACTION_TYPE_PURCHASE,
    InteractionKind.RATE: interaction_event_pb2.INTERACTION_TYPE_RATE,
    InteractionKind.SKIP: interaction_event_pb2.INTERACTION_TYPE_SKIP,
}


_UNSPECIFIED = interaction_event_pb2.INTERACTION_TYPE_UNSPECIFIED


class PoisonEvent(ValueError):
    """A payload no retry can help: it does not decode, or the event it holds is invalid.
    Consumers dead-letter it at once."""


@dataclass(frozen=True, slots=True)
class UserDeletion:
    event_id: str
    user_id: str
    requested_at: dt.datetime


def key_of(user_id: str) -> bytes:
    return user_id.encode()


def encode_interaction(event: Interaction) -> bytes:
    message = interaction_event_pb2.InteractionEvent(
        event_id=event.event_id,
        user_id=event.user_id,
        item_id=event.item_id,
        type=_TYPES[event.kind] if event.kind is not None else _UNSPECIFIED,
        value=event.value,
        surface=event.surface,
    )
    if event.event_time is not None:
        message.event_time.FromDatetime(event.event_time.astimezone(dt.UTC))
    return message.SerializeToString()


def decode_interaction(payload: bytes | None) -> Interaction:
    """The event in a payload; PoisonEvent naming what is wrong when it cannot be used."""
    if payload is None:
        raise PoisonEvent("the message has no value")
    message = interaction_event_pb2.InteractionEvent()
    try:
        message.ParseFromString(payload)
    except protobuf_message.DecodeError as error:
        raise PoisonEvent(f"not an InteractionEvent: {error}") from error
    try:
        event = interaction_from_proto(message, field="event")
        validate_interactions([event], max_batch_size=1, field="event")
    except InvalidArgument as error:
        problems = "; ".join(
            f"{violation.field.removeprefix('event[0].')}: {violation.description}"
            for violation in error.violations
        )
        raise PoisonEvent(f"invalid event: {problems}") from error
    return event


def encode_deletion(deletion: UserDeletion) -> bytes:
    message = user_deletion_event_pb2.UserDeletionEvent(
        event_id=deletion.event_id, user_id=deletion.user_id
    )
    message.requested_at.FromDatetime(deletion.requested_at.astimezone(dt.UTC))
    return message.SerializeToString()


def decode_deletion(payload: bytes | None) -> UserDeletion:
    if payload is None:
        raise PoisonEvent("the message has no value")
    message = user_deletion_event_pb2.UserDeletionEvent()
    try:
        message.ParseFromString(payload)
    except protobuf_message.DecodeError as error:
        raise PoisonEvent(f"not a UserDeletionEvent: {error}") from error
    if not message.user_id or not message.event_id:
        raise PoisonEvent("a deletion event needs event_id and user_id")
    return UserDeletion(
        message.event_id, message.user_id, message.requested_at.ToDatetime(tzinfo=dt.UTC)
    )
