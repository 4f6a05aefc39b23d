"""The embedded mode's in-process consumer: an outage keeps the drained batch (and drains
nothing more), an event failing for another reason is dropped alone."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from recsys.adapters.events.in_memory import InMemoryEventSink
from recsys.domain.ingestion import AppliedEvents, InteractionEffects
from recsys.domain.interactions import Interaction, InteractionKind
from recsys.errors import Unavailable
from recsys.events.in_process import InProcessConsumer

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def event(event_id: str) -> Interaction:
    return Interaction(event_id, "u1", 1, InteractionKind.CLICK, 0.0, NOW)


class ScriptedEffects(InteractionEffects):
    """Fails as told: `outages` calls raise Unavailable, events named in `broken` ValueError."""

    def __init__(self, *, outages: int = 0, broken: frozenset[str] = frozenset()) -> None:
        self.outages = outages
        self.broken = broken
        self.applied: list[str] = []

    async def apply(self, events: Sequence[Interaction]) -> AppliedEvents:
        if self.outages:
            self.outages -= 1
            raise Unavailable("store down")
        if any(e.event_id in self.broken for e in events):
            raise ValueError("bad event")
        self.applied.extend(e.event_id for e in events)
        return AppliedEvents(len(events), 0)


async def test_an_outage_keeps_the_batch_and_drains_nothing_more() -> None:
    sink = InMemoryEventSink(capacity=10)
    effects = ScriptedEffects(outages=2)
    consumer = InProcessConsumer(sink, effects, interval_seconds=0.01)
    await sink.publish([event("a"), event("b")])
    assert await consumer.drain_once() == 0
    await sink.publish([event("c")])
    assert await consumer.drain_once() == 0
    assert sink.pending() == 1  # not drained while the first batch waits
    assert await consumer.drain_once() == 2
    assert await consumer.drain_once() == 1
    assert effects.applied == ["a", "b", "c"]


async def test_a_failing_event_is_dropped_alone() -> None:
    sink = InMemoryEventSink(capacity=10)
    effects = ScriptedEffects(broken=frozenset({"b"}))
    consumer = InProcessConsumer(sink, effects, interval_seconds=0.01)
    await sink.publish([event("a"), event("b"), event("c")])
    assert await consumer.drain_once() == 2
    assert effects.applied == ["a", "c"]
    assert await consumer.drain_once() == 0
