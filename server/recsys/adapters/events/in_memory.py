"""In-process EventSink for the embedded mode: a bounded buffer that in-process consumers read."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence

from recsys.domain.interactions import Interaction
from recsys.ports.events import EventSink
from recsys.settings import RecsysSettings


class InMemoryEventSink(EventSink):
    """Keeps the newest `capacity` events; older ones are dropped and counted in `dropped`."""

    def __init__(self, capacity: int) -> None:
        self._events: collections.deque[Interaction] = collections.deque(maxlen=capacity)
        self._lock = asyncio.Lock()
        self.dropped = 0
        self.deletions: list[tuple[str, str]] = []

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> InMemoryEventSink:
        return cls(capacity=settings.ingest.in_memory_capacity)

    async def publish(self, interactions: Sequence[Interaction]) -> None:
        async with self._lock:
            capacity = self._events.maxlen or 0
            overflow = len(self._events) + len(interactions) - capacity
            if overflow > 0:
                self.dropped += overflow
            self._events.extend(interactions)

    async def publish_user_deletion(self, user_id: str, deletion_event_id: str) -> None:
        async with self._lock:
            # Erasure also removes the user's buffered interactions.
            kept = [event for event in self._events if event.user_id != user_id]
            self._events.clear()
            self._events.extend(kept)
            self.deletions.append((user_id, deletion_event_id))

    def pending(self) -> int:
        """Events buffered and not drained yet."""
        return len(self._events)

    async def drain(self) -> list[Interaction]:
        """Removes and returns every buffered event, oldest first."""
        async with self._lock:
            events = list(self._events)
            self._events.clear()
            return events
