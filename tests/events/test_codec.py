"""Event payloads: round trips and what counts as poison."""

from __future__ import annotations

import datetime as dt

import pytest

from recsys.domain.interactions import Interaction, InteractionKind
from recsys.events.codec import (
    PoisonEvent,
    UserDeletion,
    decode_deletion,
    decode_interaction,
    encode_deletion,
    encode_interaction,
)
from recsys.v1 import interaction_event_pb2

WHEN = dt.datetime(2026, 11, 30, 12, 0, 1, 250_000, tzinfo=dt.UTC)


def test_an_interaction_survives_the_round_trip() -> None:
    event = Interaction("e-1", "user:7", 42, InteractionKind.PURCHASE, 19.5, WHEN, "cart")
    assert decode_interaction(encode_interaction(event)) == event


def test_a_deletion_survives_the_round_trip() -> None:
    deletion = UserDeletion("erase-1", "user:7", WHEN)
    assert decode_deletion(encode_deletion(deletion)) == deletion


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (None, "no value"),
        (b"\xff\xff\xff", "not an InteractionEvent"),
        # Decodes, but the event is invalid: no type, no time.
        (interaction_event_pb2.InteractionEvent(event_id="e", user_id="u", item_id=1)
         .SerializeToString(), "invalid event: type: is required"),
        (interaction_event_pb2.InteractionEvent(
            event_id="e", user_id="", item_id=-4, type=interaction_event_pb2.INTERACTION_TYPE_VIEW
        ).SerializeToString(), "user_id: is required; item_id: must be non-negative"),
    ],
)  # fmt: skip
def test_poison_names_the_problem(payload: bytes | None, problem: str) -> None:
    with pytest.raises(PoisonEvent, match=problem):
        decode_interaction(payload)


def test_a_deletion_without_a_user_is_poison() -> None:
    with pytest.raises(PoisonEvent, match="user_id"):
        decode_deletion(encode_deletion(UserDeletion("erase-1", "", WHEN)))
