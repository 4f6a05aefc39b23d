"""Admission control: bounded concurrency and queue, refusal of calls that cannot finish in
time (pure logic on the event loop; the overload behaviour end to end is in test_overload)."""

from __future__ import annotations

import asyncio

import pytest

from recsys.deadlines import remaining_seconds, request_deadline
from recsys.errors import ResourceExhausted
from recsys.grpc_server.admission import (
    CALLER_CONCURRENCY,
    AdmissionController,
    CallerLimits,
    Overloaded,
)


async def hold(controller: AdmissionController, release: asyncio.Event) -> None:
    async with controller.admit():
        await release.wait()


async def test_calls_beyond_the_slots_wait_and_beyond_the_queue_are_refused() -> None:
    controller = AdmissionController(max_in_flight=2, max_queue=1)
    release = asyncio.Event()
    holders = [asyncio.create_task(hold(controller, release)) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert (controller.in_flight, controller.waiting) == (2, 1)
    with pytest.raises(Overloaded) as refused:
        async with controller.admit():
            pass
    assert refused.value.reason == "OVERLOADED"
    assert refused.value.retry_after_seconds > 0
    release.set()
    await asyncio.gather(*holders)
    assert (controller.in_flight, controller.waiting, controller.refused) == (0, 0, 1)


async def test_a_call_that_cannot_finish_in_time_is_refused_at_once() -> None:
    controller = AdmissionController(max_in_flight=1, max_queue=10)
    controller.service_seconds = 2.0  # calls have been taking two seconds
    release = asyncio.Event()
    holder = asyncio.create_task(hold(controller, release))
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with request_deadline(1.0), pytest.raises(Overloaded):
        async with controller.admit():
            pass
    assert loop.time() - started < 0.5  # refused at once, not queued until the deadline
    release.set()
    await holder


async def test_a_queued_call_gives_up_in_time_to_answer() -> None:
    controller = AdmissionController(max_in_flight=1, max_queue=10, reserve_seconds=0.1)
    release = asyncio.Event()
    holder = asyncio.create_task(hold(controller, release))
    await asyncio.sleep(0.01)
    with request_deadline(0.3):
        with pytest.raises(Overloaded):
            async with controller.admit():
                pass
        # It waited for a slot, and gave up with time left to answer.
        left = remaining_seconds()
        assert left is not None
        assert left > 0
    assert controller.waiting == 0
    release.set()
    await holder


async def test_service_time_is_learned_from_the_calls() -> None:
    controller = AdmissionController(max_in_flight=4, max_queue=4)
    for _ in range(5):
        async with controller.admit():
            await asyncio.sleep(0.02)
    assert 0.015 < controller.service_seconds < 0.2


async def test_waiters_are_served_in_arrival_order_and_give_back_every_slot() -> None:
    controller = AdmissionController(max_in_flight=1, max_queue=10)
    release = asyncio.Event()
    holder = asyncio.create_task(hold(controller, release))
    await asyncio.sleep(0)
    order: list[int] = []

    async def call(number: int) -> None:
        async with controller.admit():
            order.append(number)

    gone = asyncio.create_task(call(99))  # queued first, then gives up: no slot may leak
    waiters = []
    for number in range(5):
        waiters.append(asyncio.create_task(call(number)))
        await asyncio.sleep(0)
    gone.cancel()
    release.set()
    await asyncio.gather(holder, *waiters)
    assert order == [0, 1, 2, 3, 4]
    assert (controller.in_flight, controller.waiting) == (0, 0)


async def hold_as(limits: CallerLimits, caller: str, release: asyncio.Event) -> None:
    async with limits.admit(caller):
        await release.wait()


async def test_a_caller_over_its_bound_waits_for_its_own_calls_then_is_refused() -> None:
    limits = CallerLimits(limit=2, max_wait_seconds=0.05, retry_after_seconds=0.2)
    release = asyncio.Event()
    holders = [asyncio.create_task(hold_as(limits, "hog", release)) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert limits.in_flight("hog") == 2
    # Another caller is not limited by the hog's calls.
    async with limits.admit("frontend"):
        assert limits.in_flight("frontend") == 1
    with pytest.raises(ResourceExhausted) as refused:
        async with limits.admit("hog"):
            pass
    assert refused.value.reason == CALLER_CONCURRENCY
    assert refused.value.retry_after_seconds == 0.2
    # A waiting call gets the slot one of the caller's own calls gives back.
    waiter = asyncio.create_task(hold_as(limits, "hog", release))
    await asyncio.sleep(0.01)
    holders[0].cancel()
    await asyncio.sleep(0.01)
    assert limits.in_flight("hog") == 2
    release.set()
    await asyncio.gather(holders[1], waiter)
    assert (limits.in_flight("hog"), limits.refused, limits._callers) == (0, 1, {})


async def test_a_caller_over_its_bound_gives_up_within_its_deadline() -> None:
    limits = CallerLimits(limit=1, max_wait_seconds=1.0, reserve_seconds=0.05)
    release = asyncio.Event()
    holder = asyncio.create_task(hold_as(limits, "hog", release))
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with request_deadline(0.2), pytest.raises(ResourceExhausted):
        async with limits.admit("hog"):
            pass
    assert 0.1 < loop.time() - started < 0.2
    release.set()
    await holder


async def test_internal_callers_are_not_held_to_one_callers_share() -> None:
    from recsys.grpc_server.admission import CallerLimits

    limits = CallerLimits(limit=1, max_wait_seconds=0.01, exempt=frozenset({"recommend"}))
    release = asyncio.Event()

    async def hold_as(caller: str) -> None:
        async with limits.admit(caller):
            await release.wait()

    internal = [asyncio.create_task(hold_as("recommend")) for _ in range(5)]
    await asyncio.sleep(0.05)
    # All five still hold a slot: held to a limit of 1, four would have been refused by now.
    assert all(not task.done() for task in internal)
    held = asyncio.create_task(hold_as("frontend"))
    await asyncio.sleep(0.01)
    with pytest.raises(Exception, match="calls in flight") as refused:
        async with limits.admit("frontend"):
            pass
    assert refused.value.reason == "CALLER_CONCURRENCY"  # type: ignore[attr-defined]
    release.set()
    await asyncio.gather(*internal, held)
