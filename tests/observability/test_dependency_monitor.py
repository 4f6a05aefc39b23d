"""The dependency monitor's state machine with scripted probes: no network, no sleeping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from recsys.observability.dependencies import DependencyMonitor, DependencyState


def scripted(outcomes: list[str]) -> Callable[[], Awaitable[None]]:
    """A probe answering "ok", raising on "fail" or hanging on "hang", one outcome per check."""
    remaining = list(outcomes)

    async def probe() -> None:
        outcome = remaining.pop(0)
        if outcome == "fail":
            raise ConnectionError("connection refused")
        if outcome == "hang":
            await asyncio.sleep(60)

    return probe


def monitor_with(
    probes: dict[str, list[str]], *, failures_before_down: int = 2
) -> tuple[DependencyMonitor, list[tuple[str, bool]]]:
    monitor = DependencyMonitor(
        timeout_seconds=0.05, failures_before_down=failures_before_down, clock=lambda: 1.0
    )
    for name, outcomes in probes.items():
        monitor.register(name, scripted(outcomes))
    told: list[tuple[str, bool]] = []

    async def listener(state: DependencyState) -> None:
        told.append((state.name, state.up))

    monitor.add_listener(listener)
    return monitor, told


async def test_down_after_consecutive_failures_and_back_at_the_first_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    monitor, told = monitor_with({"redis": ["ok", "fail", "ok", "fail", "fail", "fail", "ok"]})
    caplog.set_level(logging.INFO, logger="recsys.observability.dependencies")
    for _ in range(7):
        await monitor.check_all()
    # One failure between successes is not an outage; two in a row are.
    assert told == [("redis", True), ("redis", False), ("redis", True)]
    state = monitor.states["redis"]
    assert state.up
    assert state.consecutive_failures == 0
    assert state.last_error == "ConnectionError: connection refused"  # kept after recovery
    records = [(r.levelname, r.getMessage(), getattr(r, "error", None)) for r in caplog.records]
    assert records == [
        ("WARNING", "dependency down; answers are degraded", "ConnectionError: connection refused"),
        ("INFO", "dependency recovered", None),
    ]


async def test_a_dependency_never_seen_up_is_down_at_its_first_failure() -> None:
    monitor, told = monitor_with({"postgres": ["fail", "fail", "ok"]})
    await monitor.check_all()
    assert told == [("postgres", False)]
    await monitor.check_all()
    assert told == [("postgres", False)]  # no news is not repeated
    await monitor.check_all()
    assert told == [("postgres", False), ("postgres", True)]


async def test_a_probe_past_its_timeout_fails_without_holding_the_others() -> None:
    monitor, told = monitor_with(
        {"model_server": ["hang"], "feature_store": ["ok"]}, failures_before_down=1
    )
    await asyncio.wait_for(monitor.check_all(), timeout=1.0)
    assert told == [("model_server", False), ("feature_store", True)]
    assert monitor.states["model_server"].last_error == "no answer within 0.05 s"


async def test_a_name_registered_twice_keeps_its_first_probe() -> None:
    monitor, told = monitor_with({"cache": ["ok"]})
    monitor.register("cache", scripted(["fail"]))
    await monitor.check_all()
    assert monitor.names == ["cache"]
    assert told == [("cache", True)]
