"""The erasure workflow with scripted stores (pure logic)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from recsys.domain.erasure import UserDataEraser, deletion_event_id, hashed_subject
from recsys.errors import Unavailable
from recsys.ports.metadata import ErasureResult


@dataclass
class Store:
    keys: int = 2
    down: bool = False
    calls: list[str] = field(default_factory=list)

    async def delete_user(self, user_id: str) -> int:
        if self.down:
            raise Unavailable("down")
        self.calls.append(user_id)
        return self.keys

    async def reset(self, user_id: str) -> int:
        return await self.delete_user(user_id)


@dataclass
class Metadata:
    audit: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)

    async def erase_user(self, user_id: str) -> ErasureResult:
        return ErasureResult(deleted_interactions=5, profile_erased=True)

    async def write_audit(self, action: str, subject: str, details: dict[str, object]) -> None:
        self.audit.append((action, subject, details))


@dataclass
class Events:
    deletions: list[tuple[str, str]] = field(default_factory=list)

    async def publish_user_deletion(self, user_id: str, event_id: str) -> None:
        self.deletions.append((user_id, event_id))


async def test_every_store_forgets_the_user_and_the_audit_names_a_hash() -> None:
    metadata, events = Metadata(), Events()
    eraser = UserDataEraser(
        features=Store(3),  # type: ignore[arg-type]
        cache=Store(1),  # type: ignore[arg-type]
        metadata=metadata,  # type: ignore[arg-type]
        events=events,  # type: ignore[arg-type]
        limiter=Store(1),  # type: ignore[arg-type]
    )
    erased = await eraser.erase("alice", request_id="r1", caller="spiffe://recsys.test/privacy")
    assert erased.deleted_keys == 5
    assert erased.deleted_interactions == 5
    assert erased.deletion_event_id == deletion_event_id("alice")
    assert events.deletions == [("alice", deletion_event_id("alice"))]
    ((action, subject, details),) = metadata.audit
    assert action == "erase_user"
    assert subject == hashed_subject("alice")
    assert "alice" not in subject
    assert details["request_id"] == "r1"
    assert details["caller"] == "spiffe://recsys.test/privacy"  # who asked for the erasure
    again = await eraser.erase("alice")
    assert again.deletion_event_id == erased.deletion_event_id


async def test_a_store_that_is_down_fails_the_erasure_before_anything_is_announced() -> None:
    metadata, events = Metadata(), Events()
    eraser = UserDataEraser(
        features=Store(down=True),  # type: ignore[arg-type]
        cache=Store(),  # type: ignore[arg-type]
        metadata=metadata,  # type: ignore[arg-type]
        events=events,  # type: ignore[arg-type]
    )
    with pytest.raises(Unavailable):
        await eraser.erase("bob")
    assert events.deletions == []
    assert metadata.audit == []
