"""CircuitBreaker state machine (pure logic: fake clock and dice)."""

from __future__ import annotations

from recsys.domain.circuit_breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, chance: float = 0.0, **kwargs: object) -> tuple[CircuitBreaker, list]:
    transitions: list[tuple[str, str]] = []
    instance = CircuitBreaker(
        "model",
        failure_threshold=5,
        open_seconds=30,
        half_open_fraction=0.1,
        success_threshold=3,
        clock=clock,
        chance=lambda: chance,
        on_transition=lambda name, old, new: transitions.append((old.value, new.value)),
        **kwargs,  # type: ignore[arg-type]
    )
    return instance, transitions


def test_opens_after_five_consecutive_failures_only() -> None:
    clock = Clock()
    cb, transitions = breaker(clock)
    for _ in range(4):
        cb.record_failure()
    cb.record_success()  # resets the streak
    for _ in range(4):
        cb.record_failure()
    assert cb.state is BreakerState.CLOSED
    cb.record_failure()
    assert cb.state is BreakerState.OPEN
    assert not cb.allow()
    assert transitions == [("closed", "open")]


def test_half_open_lets_about_a_tenth_probe_and_closes_after_successes() -> None:
    clock = Clock()
    cb, transitions = breaker(clock, chance=0.05)
    for _ in range(5):
        cb.record_failure()
    clock.now = 29.9
    assert not cb.allow()
    clock.now = 30.0
    assert cb.state is BreakerState.HALF_OPEN
    assert cb.allow()  # 0.05 < 0.1: this call probes
    for _ in range(3):
        cb.record_success()
    assert cb.state is BreakerState.CLOSED
    assert transitions == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_half_open_refuses_most_calls() -> None:
    clock = Clock()
    cb, _ = breaker(clock, chance=0.5)
    for _ in range(5):
        cb.record_failure()
    clock.now = 31
    assert not cb.allow()  # 0.5 >= 0.1: this one goes to the fallback


def test_failed_probe_reopens_for_a_new_cool_down() -> None:
    clock = Clock()
    cb, transitions = breaker(clock, chance=0.0)
    for _ in range(5):
        cb.record_failure()
    clock.now = 30
    assert cb.allow()
    cb.record_failure()
    assert cb.state is BreakerState.OPEN
    clock.now = 59
    assert cb.state is BreakerState.OPEN
    clock.now = 60
    assert cb.state is BreakerState.HALF_OPEN
    assert transitions[-2:] == [("half_open", "open"), ("open", "half_open")]
